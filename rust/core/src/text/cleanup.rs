//! Post-processing passes over a diff (ports of the reference's cleanups).

use unicode_general_category::{get_general_category, GeneralCategory as Gc};

use super::{common_overlap, common_prefix, common_suffix, Diff, Op, Unit};

/// Reorder and merge like edit sections; merge equalities. Any edit section
/// can move as long as it doesn't cross an equality.
pub fn cleanup_merge<T: PartialEq + Copy>(diffs: &mut Vec<Diff<T>>) {
    loop {
        diffs.push(Diff::new(Op::Equal, Vec::new())); // dummy entry at the end
        let mut pointer = 0usize;
        let (mut count_delete, mut count_insert) = (0usize, 0usize);
        let (mut text_delete, mut text_insert): (Vec<T>, Vec<T>) = (Vec::new(), Vec::new());
        while pointer < diffs.len() {
            match diffs[pointer].op {
                Op::Insert => {
                    count_insert += 1;
                    text_insert.extend_from_slice(&diffs[pointer].text);
                    pointer += 1;
                }
                Op::Delete => {
                    count_delete += 1;
                    text_delete.extend_from_slice(&diffs[pointer].text);
                    pointer += 1;
                }
                Op::Equal => {
                    if count_delete + count_insert > 1 {
                        if count_delete != 0 && count_insert != 0 {
                            // Factor out any common prefix.
                            let n = common_prefix(&text_insert, &text_delete);
                            if n != 0 {
                                let run = count_delete + count_insert;
                                if pointer > run && diffs[pointer - run - 1].op == Op::Equal {
                                    diffs[pointer - run - 1]
                                        .text
                                        .extend_from_slice(&text_insert[..n]);
                                } else {
                                    diffs
                                        .insert(0, Diff::new(Op::Equal, text_insert[..n].to_vec()));
                                    pointer += 1;
                                }
                                text_insert.drain(..n);
                                text_delete.drain(..n);
                            }
                            // Factor out any common suffix.
                            let n = common_suffix(&text_insert, &text_delete);
                            if n != 0 {
                                let mut t = text_insert[text_insert.len() - n..].to_vec();
                                t.extend_from_slice(&diffs[pointer].text);
                                diffs[pointer].text = t;
                                text_insert.truncate(text_insert.len() - n);
                                text_delete.truncate(text_delete.len() - n);
                            }
                        }
                        let mut new_ops = Vec::with_capacity(2);
                        if !text_delete.is_empty() {
                            new_ops.push(Diff::new(Op::Delete, std::mem::take(&mut text_delete)));
                        }
                        if !text_insert.is_empty() {
                            new_ops.push(Diff::new(Op::Insert, std::mem::take(&mut text_insert)));
                        }
                        pointer -= count_delete + count_insert;
                        let added = new_ops.len();
                        diffs.splice(pointer..pointer + count_delete + count_insert, new_ops);
                        pointer += added + 1;
                    } else if pointer != 0 && diffs[pointer - 1].op == Op::Equal {
                        // Merge this equality with the previous one.
                        let t = std::mem::take(&mut diffs[pointer].text);
                        diffs[pointer - 1].text.extend_from_slice(&t);
                        diffs.remove(pointer);
                    } else {
                        pointer += 1;
                    }
                    count_insert = 0;
                    count_delete = 0;
                    text_delete.clear();
                    text_insert.clear();
                }
            }
        }
        if diffs.last().is_some_and(|d| d.text.is_empty()) {
            diffs.pop();
        }

        // Second pass: single edits surrounded by equalities that can be
        // shifted sideways to eliminate an equality (A<ins>BA</ins>C -> <ins>AB</ins>AC).
        let mut changes = false;
        let mut pointer = 1;
        while pointer + 1 < diffs.len() {
            if diffs[pointer - 1].op == Op::Equal && diffs[pointer + 1].op == Op::Equal {
                if diffs[pointer].text.ends_with(&diffs[pointer - 1].text) {
                    // Shift the edit over the previous equality.
                    if !diffs[pointer - 1].text.is_empty() {
                        let prev = diffs[pointer - 1].text.clone();
                        let cur = &diffs[pointer].text;
                        let mut new_cur = prev.clone();
                        new_cur.extend_from_slice(&cur[..cur.len() - prev.len()]);
                        diffs[pointer].text = new_cur;
                        let mut new_next = prev;
                        new_next.extend_from_slice(&diffs[pointer + 1].text);
                        diffs[pointer + 1].text = new_next;
                    }
                    diffs.remove(pointer - 1);
                    changes = true;
                } else if diffs[pointer].text.starts_with(&diffs[pointer + 1].text) {
                    // Shift the edit over the next equality.
                    let next = diffs[pointer + 1].text.clone();
                    diffs[pointer - 1].text.extend_from_slice(&next);
                    let cur = &diffs[pointer].text;
                    let mut new_cur = cur[next.len()..].to_vec();
                    new_cur.extend_from_slice(&next);
                    diffs[pointer].text = new_cur;
                    diffs.remove(pointer + 1);
                    changes = true;
                }
            }
            pointer += 1;
        }
        if !changes {
            return;
        }
    }
}

/// Reduce the number of edits by eliminating semantically trivial equalities.
pub fn cleanup_semantic<T: Unit>(diffs: &mut Vec<Diff<T>>) {
    let mut changes = false;
    let mut equalities: Vec<usize> = Vec::new();
    // Length of diffs[equalities.last()], when it counts as the last equality.
    let mut last_equality: Option<usize> = None;
    let mut pointer: isize = 0;
    let (mut ins1, mut del1, mut ins2, mut del2) = (0usize, 0usize, 0usize, 0usize);
    while (pointer as usize) < diffs.len() {
        let p = pointer as usize;
        if diffs[p].op == Op::Equal {
            equalities.push(p);
            ins1 = ins2;
            del1 = del2;
            ins2 = 0;
            del2 = 0;
            last_equality = Some(diffs[p].text.len());
        } else {
            if diffs[p].op == Op::Insert {
                ins2 += diffs[p].text.len();
            } else {
                del2 += diffs[p].text.len();
            }
            if let (Some(len), Some(&eq)) = (last_equality, equalities.last()) {
                if len > 0 && len <= ins1.max(del1) && len <= ins2.max(del2) {
                    // Duplicate record: a deletion, and the equality becomes an insertion.
                    let text = diffs[eq].text.clone();
                    diffs.insert(eq, Diff::new(Op::Delete, text));
                    diffs[eq + 1].op = Op::Insert;
                    equalities.pop();
                    equalities.pop();
                    pointer = equalities.last().map_or(-1, |&e| e as isize);
                    ins1 = 0;
                    del1 = 0;
                    ins2 = 0;
                    del2 = 0;
                    last_equality = None;
                    changes = true;
                }
            }
        }
        pointer += 1;
    }
    if changes {
        cleanup_merge(diffs);
    }
    cleanup_semantic_lossless(diffs);

    // Find overlaps between deletions and insertions:
    // <del>abcxxx</del><ins>xxxdef</ins> -> <del>abc</del>xxx<ins>def</ins>
    let mut pointer = 1;
    while pointer < diffs.len() {
        if diffs[pointer - 1].op == Op::Delete && diffs[pointer].op == Op::Insert {
            let deletion = diffs[pointer - 1].text.clone();
            let insertion = diffs[pointer].text.clone();
            let overlap1 = common_overlap(&deletion, &insertion);
            let overlap2 = common_overlap(&insertion, &deletion);
            if overlap1 >= overlap2 {
                if 2 * overlap1 >= deletion.len() || 2 * overlap1 >= insertion.len() {
                    diffs.insert(
                        pointer,
                        Diff::new(Op::Equal, insertion[..overlap1].to_vec()),
                    );
                    diffs[pointer - 1] =
                        Diff::new(Op::Delete, deletion[..deletion.len() - overlap1].to_vec());
                    diffs[pointer + 1] = Diff::new(Op::Insert, insertion[overlap1..].to_vec());
                    pointer += 1;
                }
            } else if 2 * overlap2 >= deletion.len() || 2 * overlap2 >= insertion.len() {
                diffs.insert(pointer, Diff::new(Op::Equal, deletion[..overlap2].to_vec()));
                diffs[pointer - 1] =
                    Diff::new(Op::Insert, insertion[..insertion.len() - overlap2].to_vec());
                diffs[pointer + 1] = Diff::new(Op::Delete, deletion[overlap2..].to_vec());
                pointer += 1;
            }
            pointer += 1;
        }
        pointer += 1;
    }
}

/// Python's `str.isalnum()` for one code point (letters and numbers by
/// general category).
fn is_alnum<T: Unit>(u: T) -> bool {
    let Some(c) = u.to_char() else { return false };
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    matches!(
        get_general_category(c),
        Gc::UppercaseLetter
            | Gc::LowercaseLetter
            | Gc::TitlecaseLetter
            | Gc::ModifierLetter
            | Gc::OtherLetter
            | Gc::DecimalNumber
            | Gc::LetterNumber
            | Gc::OtherNumber
    )
}

/// Python's `str.isspace()` for one code point.
fn is_space<T: Unit>(u: T) -> bool {
    u.to_char()
        .is_some_and(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

const LF: u32 = 0x0a;
const CR: u32 = 0x0d;

fn codes_end<T: Unit>(s: &[T], tail: &[u32]) -> bool {
    s.len() >= tail.len()
        && s[s.len() - tail.len()..]
            .iter()
            .zip(tail)
            .all(|(u, &c)| u.code() == c)
}

fn codes_start<T: Unit>(s: &[T], head: &[u32]) -> bool {
    s.len() >= head.len() && s.iter().zip(head).all(|(u, &c)| u.code() == c)
}

fn ends_with_blank_line<T: Unit>(s: &[T]) -> bool {
    codes_end(s, &[LF, LF]) || codes_end(s, &[LF, CR, LF])
}

fn starts_with_blank_line<T: Unit>(s: &[T]) -> bool {
    codes_start(s, &[LF, LF])
        || codes_start(s, &[LF, CR, LF])
        || codes_start(s, &[CR, LF, LF])
        || codes_start(s, &[CR, LF, CR, LF])
}

/// How well a boundary between `one` and `two` falls on a logical
/// boundary: 6 (best) to 0 (worst).
fn semantic_score<T: Unit>(one: &[T], two: &[T]) -> u8 {
    let (Some(&c1), Some(&c2)) = (one.last(), two.first()) else {
        return 6; // edges are the best
    };
    let non_alnum1 = !is_alnum(c1);
    let non_alnum2 = !is_alnum(c2);
    let white1 = non_alnum1 && is_space(c1);
    let white2 = non_alnum2 && is_space(c2);
    let break1 = white1 && matches!(c1.code(), CR | LF);
    let break2 = white2 && matches!(c2.code(), CR | LF);
    let blank1 = break1 && ends_with_blank_line(one);
    let blank2 = break2 && starts_with_blank_line(two);
    if blank1 || blank2 {
        5
    } else if break1 || break2 {
        4
    } else if non_alnum1 && !white1 && white2 {
        3
    } else if white1 || white2 {
        2
    } else if non_alnum1 || non_alnum2 {
        1
    } else {
        0
    }
}

/// Shift single edits surrounded by equalities sideways to align them to
/// word boundaries (`The c<ins>at c</ins>ame.` -> `The <ins>cat </ins>came.`).
pub fn cleanup_semantic_lossless<T: Unit>(diffs: &mut Vec<Diff<T>>) {
    let mut pointer = 1usize;
    while pointer + 1 < diffs.len() {
        if diffs[pointer - 1].op == Op::Equal && diffs[pointer + 1].op == Op::Equal {
            let eq1_len = diffs[pointer - 1].text.len();
            let edit_len = diffs[pointer].text.len();
            // The three texts laid end to end; a candidate is a split (a, a + edit_len).
            let mut whole = Vec::with_capacity(eq1_len + edit_len + diffs[pointer + 1].text.len());
            whole.extend_from_slice(&diffs[pointer - 1].text);
            whole.extend_from_slice(&diffs[pointer].text);
            whole.extend_from_slice(&diffs[pointer + 1].text);
            // First, shift the edit as far left as possible.
            let offset = common_suffix(&diffs[pointer - 1].text, &diffs[pointer].text);
            let mut a = eq1_len - offset;
            let score_at = |a: usize| {
                semantic_score(&whole[..a], &whole[a..a + edit_len])
                    + semantic_score(&whole[a..a + edit_len], &whole[a + edit_len..])
            };
            let mut best_a = a;
            let mut best_score = score_at(a);
            // Then step right, looking for the best fit.
            while edit_len > 0 && a + edit_len < whole.len() && whole[a] == whole[a + edit_len] {
                a += 1;
                let score = score_at(a);
                // The >= encourages trailing rather than leading whitespace on edits.
                if score >= best_score {
                    best_score = score;
                    best_a = a;
                }
            }
            if best_a != eq1_len {
                // We have an improvement, save it back to the diff.
                let eq2 = whole[best_a + edit_len..].to_vec();
                let edit = whole[best_a..best_a + edit_len].to_vec();
                if best_a > 0 {
                    diffs[pointer - 1].text = whole[..best_a].to_vec();
                } else {
                    diffs.remove(pointer - 1);
                    pointer -= 1;
                }
                diffs[pointer].text = edit;
                if !eq2.is_empty() {
                    diffs[pointer + 1].text = eq2;
                } else {
                    diffs.remove(pointer + 1);
                    pointer = pointer.wrapping_sub(1);
                }
            }
        }
        pointer = pointer.wrapping_add(1);
    }
}

/// Reduce the number of edits by eliminating operationally trivial equalities.
pub fn cleanup_efficiency<T: Unit>(diffs: &mut Vec<Diff<T>>, edit_cost: usize) {
    let mut changes = false;
    let mut equalities: Vec<usize> = Vec::new();
    let mut last_equality: Option<usize> = None;
    let mut pointer: isize = 0;
    let (mut pre_ins, mut pre_del, mut post_ins, mut post_del) = (false, false, false, false);
    while (pointer as usize) < diffs.len() {
        let p = pointer as usize;
        if diffs[p].op == Op::Equal {
            if diffs[p].text.len() < edit_cost && (post_ins || post_del) {
                // Candidate found.
                equalities.push(p);
                pre_ins = post_ins;
                pre_del = post_del;
                last_equality = Some(diffs[p].text.len());
            } else {
                // Not a candidate, and can never become one.
                equalities.clear();
                last_equality = None;
            }
            post_ins = false;
            post_del = false;
        } else {
            if diffs[p].op == Op::Delete {
                post_del = true;
            } else {
                post_ins = true;
            }
            let flags = [pre_ins, pre_del, post_ins, post_del]
                .iter()
                .filter(|&&f| f)
                .count();
            if let (Some(len), Some(&eq)) = (last_equality, equalities.last()) {
                if len > 0 && (flags == 4 || (2 * len < edit_cost && flags == 3)) {
                    let text = diffs[eq].text.clone();
                    diffs.insert(eq, Diff::new(Op::Delete, text));
                    diffs[eq + 1].op = Op::Insert;
                    equalities.pop();
                    last_equality = None;
                    if pre_ins && pre_del {
                        // No changes made which could affect previous entry, keep going.
                        post_ins = true;
                        post_del = true;
                        equalities.clear();
                    } else {
                        equalities.pop();
                        pointer = equalities.last().map_or(-1, |&e| e as isize);
                        post_ins = false;
                        post_del = false;
                    }
                    changes = true;
                }
            }
        }
        pointer += 1;
    }
    if changes {
        cleanup_merge(diffs);
    }
}

"""The worked example of docs/protocol.md (section 9) is what the code sends."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_worked_example_matches_the_frames_the_code_sends() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    section = text[text.index("## 9. Worked example") :]
    program = re.search(r"```python\n(.*?)```", section, re.S)
    output = re.search(r"Output:\s*```text\n(.*?)```", section, re.S)
    assert program is not None and output is not None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(program.group(1), "protocol.md section 9", "exec"), {})
    assert printed.getvalue() == output.group(1)
    # Every frame's hex also appears, field by field, in the tables below it.
    for line in output.group(1).splitlines():
        name, frame = line.split(": ")
        checksum = frame[-23:]
        assert checksum in section.replace("\n", " "), f"{name}: checksum {checksum} not described"

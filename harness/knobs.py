"""Checked edits of train.py's source, for the tests and the benches: a knob's value, an Ultralytics argument
added to model.train(...), lines inserted at an anchor. Each edit must match exactly one place; one that
matches none or several raises HarnessError before anything runs, so that nothing tests or measures another
train.py than it says."""

import re

from harness.common import HarnessError

ARG_ANCHOR = "seed=SEED,"  # Ultralytics arguments beyond train.py's knobs go after it, in model.train(...)


def edit_knobs(source, knobs, file="train.py"):
    """source with each upper-case knob's `NAME = value  # comment` line given the new value (its comment
    kept), and the lower-case names added to model.train(...) as Ultralytics arguments after `seed=SEED,`."""
    for name, value in knobs.items():
        if name.isupper():
            source = set_knob(source, name, value, file)
    extra = ", ".join(f"{name}={value}" for name, value in knobs.items() if not name.isupper())
    return add_arguments(source, extra, file) if extra else source


def set_knob(source, name, value, file="train.py"):
    """source with its one `NAME = ...` line (at the start of a line) set to value, its comment kept."""
    pattern = re.compile(rf"^{re.escape(name)} = [^#\n]*?(\s*#|$)", flags=re.M)
    found = len(pattern.findall(source))
    if found != 1:
        raise HarnessError(f"no knob {name} in {file}: use the name of one of its `NAME = value` lines"
                           if not found else
                           f"knob {name} is set on {found} lines of {file}: an edit must change exactly one")
    return pattern.sub(lambda m: f"{name} = {value}{m[1]}", source)


def add_arguments(source, arguments, file="train.py"):
    """source with arguments ('rect=True, box=10.0') added to model.train(...) right after `seed=SEED,`."""
    return insert(source, ARG_ANCHOR, f" {arguments},", file, after=True)


def insert(source, anchor, text, file="train.py", after=True):
    """source with text inserted right after (or before) anchor, which must occur exactly once in it."""
    found = source.count(anchor)
    if found != 1:
        raise HarnessError(f"{anchor.strip()!r} is in {file} {found} times, not once: put the line back as "
                           f"the repo's train.py has it, so the edit has one place to go")
    head, tail = source.split(anchor)
    return head + (anchor + text if after else text + anchor) + tail

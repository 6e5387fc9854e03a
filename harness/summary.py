"""The summary a run prints last: its `key: value` lines after the last `---` line, for the tests and the
benches that read run logs."""


def parse_summary(log_text):
    """{key: value} of the `key: value` lines after the log's last `---` line ({} where there is none: the run
    failed)."""
    if "\n---\n" not in log_text:
        return {}
    tail = log_text.rsplit("\n---\n", 1)[1]
    return dict(line.split(": ", 1) for line in tail.strip().splitlines() if ": " in line)

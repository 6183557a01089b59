"""The README opens with exactly two set-up commands, and .ci/run is the second one."""

import re

from helpers import ROOT


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_second():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "jobs/tokenize_items.py" in cmds[0] and "pytest" in cmds[1]
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert ci == [cmds[1]]


def test_readme_documents_every_job_flag_group():
    text = (ROOT / "README.md").read_text()
    for needle in ("--items", "--embeddings", "--sample", "--config", "SEMREC_", "ray job submit",
                   "prepare_data.py", "_MANIFEST.json", "report.json"):
        assert needle in text

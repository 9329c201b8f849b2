"""The README's Python examples run as written, and print what the README's table says they measure."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run_and_agree_with_the_table():
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102  (our own README)
    printed = out.getvalue()
    # block 1: the IOI accuracy row of the table (500 prompts, seed 1) is 1.0 on tiny-dense
    assert "TaskScore(task='ioi', model='tiny-dense', n=500, seed=1" in printed and "accuracy=1.0," in printed
    # block 2: tiny-sparse keeps under a tenth of the causal attention edges (table: 0.0782 on held-out text)
    connectivity = float(re.search(r"^(0\.\d+)$", printed, flags=re.M).group(1))
    assert 0.03 < connectivity < 0.1
    # block 3: an attribution graph of the IOI prompt whose top logit is " Mary"
    summary = namespace["graph_summary"](namespace["graph"])
    top = summary["top_logits"][0]["token"]
    assert namespace["model"].tokenizer.decode([top]).strip() == "Mary" and 0 < summary["completeness_score"] <= 1

"""README's commands are what `make demo` runs, and they work when typed (here with fewer steps)."""

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from llmc.cli.main import main
from llmc.core.formats import read_model

ROOT = Path(__file__).resolve().parents[1]


def commands(text: str) -> list[str]:
    """Shell lines starting with `llmc`, continuation lines joined and whitespace collapsed."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip().startswith("llmc ")]


def demo_from_makefile() -> list[str]:
    recipe = re.search(r"^demo:\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
    return commands(recipe.group(1).replace("\t", ""))


def demo_from_readme() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"`make demo` runs.*?```bash\n(.*?)```", readme, re.S)
    return commands(block.group(1))


def test_readme_shows_what_make_demo_runs():
    assert len(demo_from_makefile()) == 3
    assert demo_from_readme() == demo_from_makefile()


def test_demo_lines_run_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shorter = {"-x": "3", "-n": "3", "-v": "2", "-m": "1", "-g": "5"}
    for line in demo_from_makefile():
        argv = shlex.split(line)[1:]
        argv = [shorter.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
        argv = [a.replace("model_00000300", "model_00000003") for a in argv]
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 0, (line, result.output)
    cfg, _ = read_model("out/demo/log/model_00000003.bin")
    assert (cfg.num_layers, cfg.channels, cfg.num_heads, cfg.max_seq_len) == (4, 128, 4, 128)
    # a second `make demo` retrains instead of refusing the first one's folder
    train = next(shlex.split(ln)[1:] for ln in demo_from_makefile() if " train-cpu " in ln)
    train = [shorter.get(train[i - 1], a) if i else a for i, a in enumerate(train)]
    result = CliRunner().invoke(main, train)
    assert result.exit_code == 0 and "starting afresh: deleted the earlier run's files" in result.output

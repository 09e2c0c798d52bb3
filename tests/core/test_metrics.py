"""core/metrics.py: main.log and metrics.csv, written fresh or cut back to a resumed step."""

from llmc.core.metrics import COLUMNS, RunLog


def test_fresh_run_and_resume_cut_back(tmp_path):
    log = RunLog(str(tmp_path))
    log.val_loss(0, 4.5)
    for step in range(4):
        log.train_step(step, 4.0 - step / 10, 1e-3, 1.5, 0.25, 1024.0, None)
    log.val_loss(4, 3.5)
    log.hellaswag(4, 0.25)
    assert (tmp_path / "main.log").read_text().splitlines() == [
        "s:0 tel:4.5000", "s:0 trl:4.0000 lr:0.001000 norm:1.50", "s:1 trl:3.9000 lr:0.001000 norm:1.50",
        "s:2 trl:3.8000 lr:0.001000 norm:1.50", "s:3 trl:3.7000 lr:0.001000 norm:1.50", "s:4 tel:3.5000",
        "s:4 eval:0.2500"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == ",".join(COLUMNS)
    assert rows[1:3] == ["0,,4.5,,,,,,", "0,4,,,0.001,1.5,250,1024,"]
    assert rows[-1] == "4,,,0.25,,,,,"
    RunLog(str(tmp_path), resume_step=2)  # a resumed run redoes steps 2 and on
    assert (tmp_path / "main.log").read_text().splitlines()[-1] == "s:1 trl:3.9000 lr:0.001000 norm:1.50"
    assert [r.split(",")[0] for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]] == ["0", "0", "1"]
    RunLog(str(tmp_path))  # a fresh run starts both anew
    assert (tmp_path / "main.log").read_text() == ""
    assert (tmp_path / "metrics.csv").read_text() == ",".join(COLUMNS) + "\n"


def test_no_output_dir_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = RunLog(None)
    log.train_step(0, 1.0, 1e-3, 1.0, 0.1, 10.0, 0.5)
    log.close()
    assert list(tmp_path.iterdir()) == []

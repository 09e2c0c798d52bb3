"""The `llmc` command line: every subcommand's --help, `llmc train-cpu` on a tiny model (llm.c's
output lines and main.log, refused GPU-only flags, one-line errors) and `llmc test` against states
written by the independent PyTorch reference."""

import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from llmc.cli.main import COMMANDS, main
from llmc.core import formats
from llmc.core.config import GPTConfig, param_shapes
from llmc.core.init import random_init
from llmc.core.flat_model import views

TINY = GPTConfig(max_seq_len=16, vocab_size=50, padded_vocab_size=128, num_layers=2, num_heads=2, channels=8)


def run(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="llmc")


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a handled error, not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert re.search(match, errors[0]), errors[0]


# ----------------------------------------------------------------------------- --help

@pytest.mark.parametrize("name", list(COMMANDS))
def test_help(name):
    result = run(name, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: llmc " + name in result.output
    assert re.search(r"Examples?:", result.output) and f"llmc {name}" in result.output.split("Example")[1]


def test_group_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output


def test_help_imports_no_heavy_module():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom llmc.cli.main import COMMANDS, main\n"
            "for c in [None, *COMMANDS]:\n"
            "    assert CliRunner().invoke(main, [c, '--help'] if c else ['--help']).exit_code == 0, c\n"
            "print(sorted(m for m in ('torch', 'cupy', 'transformers', 'nvmath', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- train-cpu

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model .bin and train/val shards."""
    d = tmp_path_factory.mktemp("tiny")
    formats.write_model(d / "model.bin", TINY, random_init(TINY))
    rng = np.random.default_rng(0)
    for name, n in (("train_000.bin", 700), ("train_001.bin", 500), ("val_000.bin", 300)):
        formats.write_shard(d / name, rng.integers(0, TINY.vocab_size, n))
    return d


def train_args(d, *extra: str) -> list[str]:
    return ["train-cpu", "-e", str(d / "model.bin"), "-i", str(d / "train_*.bin"), "-j", str(d / "val_*.bin"),
            "-b", "2", "-t", "8", *extra]


# llm.c's `step %4d/%d | loss %7.6f (%+.2fz)| norm %6.4f (%+.2fz)| lr %.2e | %.2f ms | ... %.0f tok/s`
# (llm.c's MFU field has no CPU meaning; fields after tok/s are llmc's own)
STEP_LINE = re.compile(r"^step +(\d+)/(\d+) \| loss (\d+\.\d{6}) \(([+-]\d+\.\d{2}|\+nan)z\)\| "
                       r"norm (\d+\.\d{4}) \(([+-]\d+\.\d{2}|\+nan)z\)\| lr (\d\.\d{2}e[+-]\d{2}) \| "
                       r"\d+\.\d{2} ms \|( [^|]+ \|)? \d+ tok/s( \| [^|]+)*$")


def test_train_cpu_prints_llmc_lines_and_writes_main_log(tiny, tmp_path):
    out = tmp_path / "out"
    result = run(*train_args(tiny, "-x", "3", "-v", "2", "-m", "2", "-o", str(out)))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "step    1/3 | loss " in result.output  # %4d
    steps = [STEP_LINE.match(line) for line in lines if line.startswith("step ")]
    assert len(steps) == 3 and all(steps), [line for line in lines if line.startswith("step ")]
    assert [(m[1], m[2]) for m in steps] == [("1", "3"), ("2", "3"), ("3", "3")]
    assert all(m[4] == "+nan" and m[6] == "+nan" for m in steps)  # the z-score windows are not full yet
    assert all(abs(float(m[3]) - np.log(TINY.vocab_size)) < 0.5 for m in steps)  # ~uniform at init
    assert all(m[7] == "3.00e-04" for m in steps)  # -l default, no decay (-q 1.0)
    # llm.c's order: val at step 0 and every -v steps and at the end, before that step's update
    kinds = [line.split()[0] for line in lines if line.startswith(("step ", "val loss"))]
    assert kinds == ["val", "step", "step", "val", "step", "val"]
    assert re.search(r"^=> setting grad_accum_steps=1$", result.output, re.M)

    log = (out / "main.log").read_text().splitlines()
    assert re.fullmatch(r"s:0 tel:\d+\.\d{4}", log[0])
    trl = [re.fullmatch(r"s:(\d+) trl:(\d+\.\d{4}) lr:(\d+\.\d{6}) norm:(\d+\.\d{2})", line) for line in log if "trl:" in line]
    assert [m[1] for m in trl if m] == ["0", "1", "2"]
    assert [line.split()[0] for line in log if "tel:" in line] == ["s:0", "s:2", "s:3"]
    assert all(m[3] == "0.000300" for m in trl)
    for m, step in zip(trl, steps):  # the log and the step line tell the same loss and norm
        assert float(m[2]) == pytest.approx(float(step[3]), abs=1e-4)
        assert float(m[4]) == pytest.approx(float(step[5]), abs=1e-2)


@pytest.mark.parametrize("promised", [None, 2e9, -1.0])
def test_step_line_mfu_column(tiny, monkeypatch, promised):
    """llm.c's `| %.1f%% bf16 MFU |` between the time and tok/s, where the backend promises a FLOP/s
    (-1: an unknown GPU, -100% as llm.c); none on the CPU."""
    from llmc.core import cpu
    from llmc.core.config import flops_per_token
    monkeypatch.setattr(cpu, "promised_flops", lambda: promised)
    result = run(*train_args(tiny, "-x", "2", "-v", "100", "-m", "1"))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert len(lines) == 2 and all(STEP_LINE.match(line) for line in lines)
    for line in lines:
        mfu = re.search(r"\| (\d+\.\d{2}) ms \| (-?\d+\.\d)% bf16 MFU \| \d+ tok/s", line)
        if promised is None:
            assert "MFU" not in line
        elif promised < 0:
            assert mfu and mfu[2] == "-100.0"
        else:
            want = 100 * flops_per_token(TINY, 8) * 2 * 8 / (float(mfu[1]) / 1e3) / promised
            assert float(mfu[2]) == pytest.approx(want, rel=0.02, abs=0.1)


def test_update_queued_before_the_read_back_matches_the_host_ordered_one(tiny, tmp_path):
    """Without -sl/-sg the update is queued before the host reads the norm (clipped from the backend's
    own norm); with them (thresholds never reached) the host clips: same training either way."""
    runs = {}
    for name, extra in (("device", []), ("host", ["-sl", "1000", "-sg", "1000"])):
        out = tmp_path / name
        result = run(*train_args(tiny, "-x", "6", "-v", "3", "-m", "1", "-l", "3e-2", "-o", str(out), *extra))
        assert result.exit_code == 0, result.output
        runs[name] = (out / "main.log").read_text()
    assert "norm:" in runs["device"] and runs["device"] == runs["host"]


def test_train_cpu_gradient_accumulation_and_schedule(tiny):
    result = run(*train_args(tiny, "-x", "4", "-d", "32", "-v", "100", "-m", "1", "-k", "linear", "-l", "1e-3",
                             "-u", "2", "-q", "0.0"))
    assert result.exit_code == 0, result.output
    assert "=> setting grad_accum_steps=2" in result.output
    lrs = [STEP_LINE.match(line)[7] for line in result.output.splitlines() if line.startswith("step ")]
    assert lrs == ["5.00e-04", "1.00e-03", "1.00e-03", "5.00e-04"]  # warmup 2, then linear to 0 at step 4


def test_train_cpu_overfits_a_single_batch(tiny):
    result = run(*train_args(tiny, "-x", "8", "-a", "1", "-l", "1e-2", "-v", "100", "-m", "1"))
    assert result.exit_code == 0, result.output
    losses = [float(STEP_LINE.match(line)[3]) for line in result.output.splitlines() if line.startswith("step ")]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("flag", [["-r", "1"], ["-ge", "0"], ["-z", "1"], ["-pn", "2"], ["-pr", "1"], ["-w", "0"],
                                  ["-f", "1"], ["-lg", "5"], ["-pg", "8"], ["-pi", "tcp"]])
def test_train_cpu_refuses_gpu_only_flags(tiny, flag):
    result = run(*train_args(tiny, "-x", "1", *flag))
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert re.search(rf"Error: {re.escape(flag[0])} is a GPU-only flag.*llmc train-gpu", result.output), result.output
    assert "step " not in result.output


def test_train_cpu_missing_data(tiny, tmp_path):
    args = train_args(tiny, "-x", "1")
    args[args.index("-i") + 1] = str(tmp_path / "nothing_*.bin")
    assert_one_line_error(run(*args), r"no files found matching.*nothing_\*\.bin")


def test_train_cpu_missing_model(tiny, tmp_path):
    args = train_args(tiny, "-x", "1")
    args[args.index("-e") + 1] = str(tmp_path / "absent.bin")
    assert_one_line_error(run(*args), r"absent\.bin")


def test_train_cpu_bad_descriptor(tiny):
    args = train_args(tiny, "-x", "1")
    args[args.index("-e") + 1] = "d13"
    assert_one_line_error(run(*args), r"unsupported model descriptor 'd13'")


def test_train_cpu_sequence_longer_than_the_model(tiny):
    args = train_args(tiny, "-x", "1")
    args[args.index("-t") + 1] = "17"
    assert_one_line_error(run(*args), r"-t 17 .*max_seq_len 16")


@pytest.mark.parametrize("total", ["24", "0"])
def test_train_cpu_total_batch_not_a_multiple(tiny, total):
    assert_one_line_error(run(*train_args(tiny, "-x", "1", "-d", total)), rf"-d {total} must be a positive multiple of .* 16")


def test_train_cpu_unknown_schedule(tiny):
    assert_one_line_error(run(*train_args(tiny, "-x", "1", "-k", "exp", "-v", "100")), r"schedule 'exp'")


# ----------------------------------------------------------------------------- test

# (config, B, T): vocab never a multiple of 128, odd T, 1, 3 and 4 heads
REFERENCE_SHAPES = [
    (GPTConfig(max_seq_len=16, vocab_size=37, padded_vocab_size=128, num_layers=2, num_heads=3, channels=12), 2, 7),
    (GPTConfig(max_seq_len=13, vocab_size=131, padded_vocab_size=256, num_layers=1, num_heads=1, channels=8), 3, 13),
    (GPTConfig(max_seq_len=24, vocab_size=200, padded_vocab_size=256, num_layers=3, num_heads=4, channels=16), 2, 9),
]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    pytest.importorskip("torch")
    from llmc.core.torch_gpt2 import write_reference

    out = []
    for k, (cfg, B, T) in enumerate(REFERENCE_SHAPES):
        model, state = write_reference(tmp_path_factory.mktemp(f"ref{k}"), cfg, B=B, T=T, steps=10, seed=k)
        out.append((cfg, model, state))
    return out


TEST_STEP = re.compile(r"^step (\d+): loss (\d+\.\d{6}) \(took \d+\.\d{6} ms\) OK = ([01])$")


def check_output(result) -> list[str]:
    lines = result.output.splitlines()
    assert "Traceback" not in result.output
    return lines


def checked_steps(lines: list[str]) -> list[re.Match]:
    return [m for m in map(TEST_STEP.match, lines) if m]


@pytest.mark.parametrize("k", range(len(REFERENCE_SHAPES)))
def test_llmc_test_passes_on_torch_references(references, k):
    cfg, model, state = references[k]
    result = run("test", "-m", str(model), "-s", str(state))
    lines = check_output(result)
    assert result.exit_code == 0, result.output
    assert lines[-1] == "overall okay: 1"
    steps = checked_steps(lines)
    assert [int(m[1]) for m in steps] == list(range(10)) and all(m[3] == "1" for m in steps)
    assert "step losses checked against the state's loss trailer" in lines
    assert sum(line.startswith("OK d") for line in lines) == len(param_shapes(cfg))
    assert "OK (LOGITS)" in result.output and "OK (LOSS)" in result.output


@pytest.mark.parametrize("tensor", ["wte", "qkvw", "fcprojb", "lnfb"])
def test_llmc_test_fails_on_one_perturbed_gradient(references, tmp_path, tensor):
    cfg, model, state_path = references[0]
    state = formats.read_debug_state(state_path, cfg)
    grads = views(state.grads, param_shapes(cfg))
    grads[tensor].reshape(-1)[7] += 0.1  # in wte, a real (not padded) row
    formats.write_debug_state(tmp_path / "bad.bin", state)
    result = run("test", "-m", str(model), "-s", str(tmp_path / "bad.bin"))
    lines = check_output(result)
    assert result.exit_code == 1, result.output
    assert lines[-1] == "overall okay: 0"
    assert [line.split()[2] for line in lines if line.startswith("NOT OK d")] == [f"d{tensor}"]


def test_llmc_test_fails_on_one_wrong_step_loss(references, tmp_path):
    cfg, model, state_path = references[1]
    state = formats.read_debug_state(state_path, cfg)
    state.ref_losses[6] += 0.1
    formats.write_debug_state(tmp_path / "bad.bin", state)
    result = run("test", "-m", str(model), "-s", str(tmp_path / "bad.bin"))
    lines = check_output(result)
    assert result.exit_code == 1, result.output
    assert lines[-1] == "overall okay: 0"
    assert [m[3] for m in checked_steps(lines)] == ["1"] * 6 + ["0"] + ["1"] * 3


def test_llmc_test_without_trailer_checks_step_zero_only(references, tmp_path):
    cfg, model, state_path = references[2]
    state = formats.read_debug_state(state_path, cfg)
    state.ref_losses = None
    formats.write_debug_state(tmp_path / "plain.bin", state)
    result = run("test", "-m", str(model), "-s", str(tmp_path / "plain.bin"))
    lines = check_output(result)
    assert result.exit_code == 0, result.output
    assert "only step 0" in result.output
    assert lines[-1] == "overall okay: 1"
    assert not checked_steps(lines)


def test_llmc_test_fewer_steps(references):
    cfg, model, state = references[0]
    result = run("test", "-m", str(model), "-s", str(state), "--steps", "3")
    assert result.exit_code == 0, result.output
    assert [int(m[1]) for m in checked_steps(result.output.splitlines())] == [0, 1, 2]


def test_llmc_test_state_of_another_model(references):
    _, model, _ = references[0]
    _, _, other_state = references[2]  # vocab 200 tokens in a vocab-37 model's state
    assert_one_line_error(run("test", "-m", str(model), "-s", str(other_state)), r"vocab|bytes")


def test_llmc_test_missing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the defaults, gpt2_124M.bin and its state, are looked for here
    assert_one_line_error(run("test"), r"gpt2_124M\.bin")

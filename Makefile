PYTHON ?= python3
VENV ?= .venv

.PHONY: install test test-gpu demo bench bench-cpu bench-gpu bench-gpu-start bench-gpu-llama bench-gpu-fp8-quality bench-multigpu clean

install:
	$(PYTHON) -m pip install -e '.[dev]'

test:
	$(PYTHON) -m pytest -q -m "not gpu" tests

test-gpu:
	$(PYTHON) -m pytest -q -m gpu tests

# README's lines as typed (tests/test_readme.py keeps the two the same); --overwrite: a rerun retrains
demo:
	llmc prepro tinyshakespeare --builtin -o out/demo/data
	llmc train-cpu -e d4:c128:h4:t128 -i out/demo/data/tiny_shakespeare_train.bin \
	    -j out/demo/data/tiny_shakespeare_val.bin -o out/demo/log --overwrite \
	    -b 8 -t 64 -x 300 -l 1e-3 -u 20 -q 0.1 -v 50 -m 10 -s 0 -n 300
	llmc sample -e out/demo/log/model_00000300.bin --prompt "ROMEO:" -g 80

bench: bench-cpu

bench-cpu:
	$(PYTHON) -m tests.bench.bench_cpu

# LLM_C=path/to/train_gpt2cu runs llm.c in the same command (how to build it: tests/bench/bench_gpu.py)
BENCH_GPU = $(PYTHON) -m tests.bench.bench_gpu $(if $(LLM_C),--llm-c $(LLM_C))

# GPT-2 124M (d12), 350M (d24) and 1.5B (d48, recomputing the GELU as llm.c's default -r 1); d12 and d48 in
# bf16 and FP8 (-f8 1) beside PyTorch's bf16 and torchao's FP8
WITH_FP8 = --sides llmc llmc-fp8 torch torch-fp8 $(if $(LLM_C),llm.c)
bench-gpu:
	$(BENCH_GPU) -e d12 -b 16 64 $(WITH_FP8)
	$(BENCH_GPU) -e d24 -b 16
	$(BENCH_GPU) -e d48 -b 8 -r 1 $(WITH_FP8)

# a warm start: the whole process of `train-gpu -e d12 -b 16 -t 1024 -x 2` (llm.c's too with LLM_C=path)
bench-gpu-start:
	$(PYTHON) -m tests.bench.bench_start $(if $(LLM_C),--llm-c $(LLM_C))

# Llama-3.2-1B's shape (L16, C2048, 32 heads, 8 KV heads, SwiGLU 8192, V 128256) at T=2048
bench-gpu-llama:
	$(PYTHON) -m tests.bench.bench_gpu -e llama3.2-1b -t 2048 -b 8 16

# FP8's losses against bf16's: d12 T=1024, 600 steps of llm.c's 124M schedule shape, also with -w 0
bench-gpu-fp8-quality:
	$(PYTHON) -m tests.bench.fp8_quality --steps 600

# 1, 2, 4, 8 GPUs (as many as the machine has), -z 0 and -z 1; d48 also checks the losses against 1 GPU
bench-multigpu:
	$(PYTHON) -m tests.bench.bench_multigpu -e d12 -b 16
	$(PYTHON) -m tests.bench.bench_multigpu -e d48 -b 8 -r 1 --check-losses

clean:
	rm -rf build *.egg-info .pytest_cache out

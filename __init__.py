"""llmc: llm.c's GPT-2/GPT-3 training as a Python command-line suite."""

__version__ = "0.1.0"

"""The GPU suite's parts; ``benchmarks/gpu_suite.py`` is the entry point (``python -m benchmarks.gpu_suite``).

common     the section registry, tables, timers, the child processes
checks     gla_check, scan_check, pararnn_check, memory_check, packed_check
coverage   every Triton kernel launched by a check
warmup     fla's warm-up processes (and our cold first call)
timings    gla_bench, pararnn_bench
training   model_bench and its child process
"""

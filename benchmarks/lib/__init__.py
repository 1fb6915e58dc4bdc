"""Tools shared by the benchmarks and the tests: ``sm90_harness`` compiles the Triton kernels offline for sm_90 and
sm_80."""

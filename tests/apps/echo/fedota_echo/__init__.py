"""No-training Message-API app for transport benchmarks (test fixture)."""

"""Development tooling: throwaway Docker hosts for the demo, the tests and the benchmarks."""

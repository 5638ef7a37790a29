//! Shared inputs of the benchmarks in `benches/` and the instruction-count
//! harnesses in `examples/`, so that both measure exactly the same work.

pub mod codec_stream;
pub mod topic_workload;
pub mod wire_inputs;

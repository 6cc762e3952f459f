#!/usr/bin/env bash
# The project's test command (README, .ci/run): formatting, clippy with and without the cuda
# feature (warnings are errors), then every crate's tests (and the fuzz test once more with the
# tokenizer.json parser built in), with NVRTC 13.0 installed from PyPI so
# that every CUDA kernel is compiled for sm_90a even on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --workspace --all-targets --locked --features gla-cli/cuda -- -D warnings
eval "$(bash .ci/nvrtc-setup.sh)"
export GLA_REQUIRE_NVRTC=1
cargo test --workspace --locked
# the tokenizer.json parser is fuzzed only with the feature that builds it
cargo test -p gla-model --locked --features hf-tokenizer --test fuzz

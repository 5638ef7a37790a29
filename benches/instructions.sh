#!/usr/bin/env bash
# Instructions per iteration, amqp-wire vs amq-protocol 10, counted by
# callgrind inside each workload's function only (repeatable on a noisy
# machine, unlike wall-clock time). Needs valgrind.
#
# PROFILE selects the cargo profile: bench-best (the default; thin LTO and
# one codegen unit, the workspace's best build, at which the README's figures
# are quoted) or release (cargo's default settings, for information).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-bench-best}
cargo build -q --profile "$profile" -p amqp-benches --example wire_instructions
bin=${CARGO_TARGET_DIR:-target}/$profile/examples/wire_instructions
echo "profile: $profile" >&2
"$bin" check >&2
printf '| group | amqp-wire | amq-protocol | ratio |\n|---|---|---|---|\n'
# serialize_publish and table_encode time our slice API (encode_to_slice,
# encode_field_table_to_slice) against amq-protocol's writer over a slice;
# the *_bufmut rows time our generic BufMut API for information.
for g in parse_publish parse_deliver parse_ack_x10000 parse_body_1B parse_body_128KiB serialize_publish table_decode table_encode \
  serialize_publish_bufmut table_encode_bufmut; do
  n=1000; [ "$g" = parse_ack_x10000 ] && n=10
  count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
      --toggle-collect="wire_instructions::$2_$3" "$bin" "$g/$2" "$n" 2>&1 |
      sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
  }
  fn=${g%_x10000}; fn=${fn#parse_}
  case $g in parse_*) f=parse;; serialize_*) f=serialize;; table_decode) f=table_decode;; table_encode*) f=table_encode;; esac
  of=$f; case $g in *_bufmut) of=${f}_bufmut;; esac
  o=$(count "$g" ours "$of"); t=$(count "$g" theirs "$f")
  printf '| %s | %s | %s | %s× |\n' "$g" "$((o / n))" "$((t / n))" "$(awk "BEGIN{printf \"%.2f\", $t/$o}")"
done

# Sourced by the benchmark scripts: where things are, a release build, a free loopback port,
# and starting Outpost.
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
harness=${OUTPOST_BENCH_HARNESS:-$top/../shared/bench}

build_release() { (cd "$top" && cargo build --release --locked -q); }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_outpost DATA_DIR PORT LOG [SERVE_ARGS...]: runs the release binary (in $CARGO_TARGET_DIR
# when set, like build_release) on 127.0.0.1:PORT, waits until /v2/ answers, leaves its PID in $pid.
start_outpost() {
  mkdir -p "$1"
  "${CARGO_TARGET_DIR:-$top/target}/release/outpost" serve --listen "127.0.0.1:$2" --data-dir "$1" "${@:4}" 2>"$3" &
  pid=$!
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$2/v2/" && break; sleep 0.05; done
}

# settled_blob DIR: writes DIR/blob.bin (1 GiB of random bytes), flushed and settled so that
# page-cache writeback does not skew what is measured next; sets $blob and $digest.
settled_blob() {
  blob=$1/blob.bin
  head -c 1G /dev/urandom >"$blob"; sync; sleep 5
  digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
}

# cpu PID: CPU seconds ×100 the process has used (user + system).
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }

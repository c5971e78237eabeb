#!/bin/sh
# mlship-edge: the edge container's entrypoint and the helpers the deployer runs in the edge image.
#   serve                          HAProxy in the foreground on /state/haproxy.cfg (master-worker)
#   write-config                   stdin -> /state/haproxy.cfg, atomically, only if `haproxy -c` accepts it
#   store-model DIR NAME SHA256... a tar on stdin -> DIR (files checked by sha256, read-only, DIR renamed in)
#   prune-models ROOT MINUTES KEEP...  remove ROOT/<16 hex> dirs not in KEEP and older than MINUTES
# Arguments are data (never evaluated); the deployer passes them as argv.
set -eu
CFG=/state/haproxy.cfg

serve() {
    if [ ! -s "$CFG" ]; then
        echo "mlship-edge: $CFG is missing: the deployer writes it before it starts the edge" >&2
        exit 64
    fi
    mkdir -p /run/haproxy
    exec haproxy -W -db -f "$CFG"
}

write_config() {
    tmp=$(mktemp /state/.haproxy.cfg.XXXXXX)
    cat >"$tmp"
    if ! out=$(haproxy -c -f "$tmp" 2>&1); then
        rm -f "$tmp"
        echo "mlship-edge: the new config was refused, the old one stays: $out" >&2
        exit 65
    fi
    chmod 644 "$tmp"
    mv -f "$tmp" "$CFG"
}

store_model() {
    dir=$1
    shift
    parent=$(dirname "$dir")
    mkdir -p "$parent"
    tmp=$(mktemp -d "$parent/.upload-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    tar -x --no-same-owner --no-same-permissions -C "$tmp" -f -
    names=""
    while [ $# -ge 2 ]; do
        name=$1 want=$2
        shift 2
        if [ ! -f "$tmp/$name" ]; then
            echo "$name: not in the uploaded stream" >&2
            exit 66
        fi
        got=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
        if [ "$got" != "$want" ]; then
            echo "$name: received sha256 $got, expected $want" >&2
            exit 67
        fi
        chmod 444 "$tmp/$name"
        names="$names $name"
    done
    chmod 755 "$tmp"
    if [ -d "$dir" ]; then
        # Named by hash: the same bytes again (a redeploy, a rollback); rename each file over its twin.
        for name in $names; do mv -f "$tmp/$name" "$dir/$name"; done
    else
        mv "$tmp" "$dir"
    fi
    echo "stored $dir$names"
}

prune_models() {
    root=$1 minutes=$2
    shift 2
    gone="" count=0
    for path in "$root"/*; do
        name=${path##*/}
        case $name in *[!0-9a-f]*) continue ;; esac
        [ ${#name} -eq 16 ] || continue
        { [ -d "$path" ] && [ ! -L "$path" ]; } || continue
        keep=0
        for k in "$@"; do [ "$k" = "$name" ] && keep=1; done
        [ $keep -eq 0 ] || continue
        [ -n "$(find "$path" -maxdepth 0 -mmin +"$minutes")" ] || continue
        rm -rf -- "$path"
        gone="$gone $name"
        count=$((count + 1))
    done
    echo "removed $count unrecorded model(s)${gone:+:$gone}"
}

command=${1:-serve}
[ $# -eq 0 ] || shift
case $command in
serve) serve ;;
write-config) write_config ;;
store-model) store_model "$@" ;;
prune-models) prune_models "$@" ;;
*) exec "$command" "$@" ;;
esac

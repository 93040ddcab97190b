#!/usr/bin/env bash
# Build kube-apiserver from the published k8s.io/kubernetes Go module (see go.mod here), or reuse the binary
# cached for this Kubernetes version, and print its path. Same cache as dyndisc.testing.servers.kube:
#   ${XDG_CACHE_HOME:-~/.cache}/dyndisc/kube-apiserver-<version>/kube-apiserver
# DYNDISC_KUBE_APISERVER_BIN, when set, is used as is. Pass --force to rebuild.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ -n "${DYNDISC_KUBE_APISERVER_BIN:-}" ]; then
  [ -x "$DYNDISC_KUBE_APISERVER_BIN" ] || { echo "DYNDISC_KUBE_APISERVER_BIN=$DYNDISC_KUBE_APISERVER_BIN is not executable" >&2; exit 1; }
  echo "$DYNDISC_KUBE_APISERVER_BIN"
  exit 0
fi

version="$(awk '($1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes")) { print $NF; exit }' "$here/go.mod")"
[ -n "$version" ] || { echo "cannot read the k8s.io/kubernetes version from $here/go.mod" >&2; exit 1; }
out_dir="${XDG_CACHE_HOME:-$HOME/.cache}/dyndisc/kube-apiserver-$version"
out="$out_dir/kube-apiserver"

if [ -x "$out" ] && [ "${1:-}" != "--force" ]; then
  echo "$out"
  exit 0
fi

go_bin="$(command -v go || true)"
[ -n "$go_bin" ] || { [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go; }
[ -n "$go_bin" ] || { echo "building kube-apiserver needs the Go toolchain (go on PATH)" >&2; exit 1; }

mkdir -p "$out_dir"
exec 9>"$out_dir/.build.lock"
flock 9  # one build at a time (shared with the Python builder)
if [ -x "$out" ] && [ "${1:-}" != "--force" ]; then
  echo "$out"
  exit 0
fi

major_minor="${version#v}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=${major_minor%%.*}"
minor="${major_minor#*.}"
ldflags="$ldflags -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
partial="$out_dir/.kube-apiserver.$$.partial"
start=$SECONDS
echo "building kube-apiserver $version with $("$go_bin" version) (first build: many minutes)" >&2
(cd "$here" && GOFLAGS=-mod=mod CGO_ENABLED=0 "$go_bin" build -trimpath -ldflags="$ldflags" -o "$partial" .) >&2
mv -f "$partial" "$out"
echo "built in $((SECONDS - start))s" >&2
echo "$out"

#!/usr/bin/env bash
# Build kube-apiserver and kube-controller-manager from the published k8s.io/kubernetes Go module (see
# go.mod here; the commands are cmd/<name>), or reuse the binaries cached for this Kubernetes version, and
# print their paths, one a line. Same cache as dyndisc.testing.servers.kube_build:
#   ${XDG_CACHE_HOME:-~/.cache}/dyndisc/<name>-<version>/<name>
#
#   build.sh [--force] [kube-apiserver] [kube-controller-manager]    (no name: both)
#
# DYNDISC_KUBE_APISERVER_BIN / DYNDISC_KUBE_CONTROLLER_MANAGER_BIN, when set, are used as they are.
# --force rebuilds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

force=
components=()
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    kube-apiserver | kube-controller-manager) components+=("$arg") ;;
    *) echo "usage: $0 [--force] [kube-apiserver] [kube-controller-manager]" >&2; exit 2 ;;
  esac
done
[ "${#components[@]}" -gt 0 ] || components=(kube-apiserver kube-controller-manager)

version="$(awk '($1 == "k8s.io/kubernetes" || ($1 == "require" && $2 == "k8s.io/kubernetes")) { print $NF; exit }' "$here/go.mod")"
[ -n "$version" ] || { echo "cannot read the k8s.io/kubernetes version from $here/go.mod" >&2; exit 1; }

major_minor="${version#v}"
minor="${major_minor#*.}"
pkg=k8s.io/component-base/version
# Strip symbols, and stamp the version as Kubernetes' own build does (else the binaries say v0.0.0).
ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=${major_minor%%.*}"
ldflags="$ldflags -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"

go_bin=

build_one() {
  local name="$1" override_var out_dir out partial start
  override_var="DYNDISC_$(echo "$name" | tr 'a-z-' 'A-Z_')_BIN"  # DYNDISC_KUBE_APISERVER_BIN, ...
  if [ -n "${!override_var:-}" ]; then
    [ -x "${!override_var}" ] || { echo "$override_var=${!override_var} is not executable" >&2; return 1; }
    echo "${!override_var}"
    return 0
  fi
  out_dir="${XDG_CACHE_HOME:-$HOME/.cache}/dyndisc/$name-$version"
  out="$out_dir/$name"
  if [ -x "$out" ] && [ -z "$force" ]; then
    echo "$out"
    return 0
  fi
  if [ -z "$go_bin" ]; then
    go_bin="$(command -v go || true)"
    [ -n "$go_bin" ] || { [ -x /usr/local/go/bin/go ] && go_bin=/usr/local/go/bin/go; }
    [ -n "$go_bin" ] || { echo "building $name needs the Go toolchain (go on PATH)" >&2; return 1; }
  fi
  mkdir -p "$out_dir"
  (
    exec 9>"$out_dir/.build.lock"
    flock 9  # one build of this binary at a time (shared with the Python builder)
    if [ -x "$out" ] && [ -z "$force" ]; then
      exit 0  # another process built it while we waited
    fi
    partial="$out_dir/.$name.$$.partial"
    start=$SECONDS
    echo "building $name $version with $("$go_bin" version) (first build: many minutes)" >&2
    (cd "$here" && GOFLAGS=-mod=mod CGO_ENABLED=0 "$go_bin" build -trimpath -ldflags="$ldflags" -o "$partial" "./cmd/$name") >&2
    mv -f "$partial" "$out"
    echo "built $name in $((SECONDS - start))s" >&2
  )
  echo "$out"
}

for name in "${components[@]}"; do
  build_one "$name"
done

# Shared helpers of scripts/bootstrap-env and scripts/in-env (sourced, not run).

CHEMOMECH_CA_BUNDLE=${CHEMOMECH_CA_BUNDLE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}

# chemomech_root_dir REPO: path of the root keyed by the package lists.
chemomech_root_dir() {
  local repo=$1 cache=${CHEMOMECH_CACHE:-${HOME:-/root}/.cache/chemomech} key
  key=$(cat "$repo/env/debian-packages.txt" "$repo/env/pip-requirements.txt" | sha256sum | cut -c1-12)
  echo "$cache/sid-$key"
}

# chemomech_chroot [--exec] ROOT REPO CMD...: run CMD inside ROOT with private mounts.
# /proc, /dev, /sys, /tmp, the clone and its sibling ../shared appear at their host paths;
# the mounts belong to a private mount namespace and vanish with the process.
# With --exec the calling shell is replaced (unshare, bash and chroot exec in turn), so CMD
# keeps the caller's PID and receives its signals (SIGTERM from kill or a batch scheduler).
chemomech_chroot() {
  local run=()
  if [[ $1 == --exec ]]; then run=(exec); shift; fi
  local root=$1 repo=$2; shift 2
  local shared
  shared=$(cd "$repo/.." && pwd)/shared
  "${run[@]}" unshare --mount --propagation private -- bash -c "$_CHEMOMECH_CHROOT_SCRIPT" \
    chroot "$root" "$repo" "$shared" "$PWD" "$@"
}

_CHEMOMECH_CHROOT_SCRIPT='
set -e
root=$1 repo=$2 shared=$3 cwd=$4; shift 4
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mkdir -p "$root/tmp" && mount --bind /tmp "$root/tmp"
mkdir -p "$root$repo" && mount --bind "$repo" "$root$repo"
if [[ -d "$shared" ]]; then mkdir -p "$root$shared" && mount --bind "$shared" "$root$shared"; fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
[[ -d "$root$cwd" ]] || cwd=$repo
exec chroot "$root" /usr/bin/env -C "$cwd" \
  PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" \
  PIP_CERT=/etc/chemomech/ca-bundle.crt SSL_CERT_FILE=/etc/chemomech/ca-bundle.crt \
  REQUESTS_CA_BUNDLE=/etc/chemomech/ca-bundle.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
  OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
  PYTHONPATH="$repo" MPLBACKEND=Agg CI="${CI:-}" CHEMOMECH_IN_ENV=1 \
  "$@"
'

# Shared steps of scripts/test and scripts/demo (sourced, not run): install the Debian packages
# that are missing, configure and build. Each step is a function so later scripts can add their own.

MOE_PACKAGES=(cmake ninja-build g++ ccache libdnnl-dev ocl-icd-opencl-dev libcli11-dev nlohmann-json3-dev catch2 python3 chromium)
MOE_BUILD_DIR="${MOE_BUILD_DIR:-build}"
MOE_JOBS="${MOE_JOBS:-2}"
MOE_NATIVE="${MOE_NATIVE:-ON}"

moe_step() { printf '\n==> %s\n' "$*"; }
moe_die() {
  printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
  exit 1
}

# Runs a command as root: directly when we are root, through sudo otherwise.
moe_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    moe_die "need root (or sudo) to run: $*"
  fi
}

moe_package_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

# Installs whichever of MOE_PACKAGES are missing; runs `apt-get update` once, only if needed.
moe_install_deps() {
  moe_step "Checking Debian packages"
  if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "not a Debian system (no dpkg/apt-get): assuming these are installed: ${MOE_PACKAGES[*]}"
    return 0
  fi
  local missing=() package
  for package in "${MOE_PACKAGES[@]}"; do
    moe_package_installed "$package" || missing+=("$package")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "all present: ${MOE_PACKAGES[*]}"
    return 0
  fi
  echo "installing: ${missing[*]}"
  moe_as_root env DEBIAN_FRONTEND=noninteractive apt-get update
  moe_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Configures MOE_BUILD_DIR with Ninja, Release (asserts off), native code unless MOE_NATIVE=OFF.
moe_configure() {
  moe_step "Configuring ${MOE_BUILD_DIR} (Release, MOE_NATIVE=${MOE_NATIVE})"
  local cache="${MOE_BUILD_DIR}/CMakeCache.txt"
  if [ -f "$cache" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
    moe_die "${MOE_BUILD_DIR}/ was configured with another generator; remove it and run again"
  fi
  cmake -S . -B "$MOE_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOE_NATIVE="$MOE_NATIVE"
}

# Builds the given targets (default: everything) with MOE_JOBS parallel jobs.
moe_build() {
  moe_step "Building ${*:-all targets} (-j${MOE_JOBS})"
  local targets=()
  if [ "$#" -gt 0 ]; then targets=(--target "$@"); fi
  cmake --build "$MOE_BUILD_DIR" -j"$MOE_JOBS" "${targets[@]}"
}

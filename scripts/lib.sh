# shellcheck shell=bash
# Shared steps of scripts/test and scripts/demo (sourced, not run): install the Debian packages
# that are missing, configure and build. Each step is a function so later scripts can add their own.

MOE_PACKAGES=(cmake ninja-build g++ ccache libdnnl-dev ocl-icd-opencl-dev libcli11-dev nlohmann-json3-dev catch2 python3 chromium
  libopenmpi-dev openmpi-bin clang-format
  python3-torch python3-numpy)
# scripts/fuzz only: clang++-14 and its libFuzzer / sanitizer runtimes (libclang_rt.fuzzer-x86_64.a).
MOE_FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev)
MOE_BUILD_DIR="${MOE_BUILD_DIR:-build}"
MOE_ASAN_BUILD_DIR="${MOE_ASAN_BUILD_DIR:-build-asan}"
MOE_FUZZ_BUILD_DIR="${MOE_FUZZ_BUILD_DIR:-build-fuzz}"
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
moe_install_deps() { moe_install_packages "${MOE_PACKAGES[@]}"; }

# Installs whichever of the given Debian packages are missing.
moe_install_packages() {
  local wanted=("$@")
  moe_step "Checking Debian packages"
  if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "not a Debian system (no dpkg/apt-get): assuming these are installed: ${wanted[*]}"
    return 0
  fi
  local missing=() package
  for package in "${wanted[@]}"; do
    moe_package_installed "$package" || missing+=("$package")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "all present: ${wanted[*]}"
    return 0
  fi
  echo "installing: ${missing[*]}"
  moe_as_root env DEBIAN_FRONTEND=noninteractive apt-get update
  moe_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# Configures build directory $1 with Ninja and the remaining cmake arguments.
moe_cmake_configure() {
  local dir="$1"
  shift
  local cache="${dir}/CMakeCache.txt"
  if [ -f "$cache" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
    moe_die "${dir}/ was configured with another generator; remove it and run again"
  fi
  cmake -S . -B "$dir" -G Ninja "$@"
}

# Configures MOE_BUILD_DIR with Ninja, Release (asserts off), native code unless MOE_NATIVE=OFF.
moe_configure() {
  moe_step "Configuring ${MOE_BUILD_DIR} (Release, MOE_NATIVE=${MOE_NATIVE})"
  moe_cmake_configure "$MOE_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DMOE_NATIVE="$MOE_NATIVE"
}

# Configures MOE_ASAN_BUILD_DIR: GCC with AddressSanitizer + UndefinedBehaviorSanitizer, -O1, asserts on.
# Without MPI: OpenMPI's plugins (dlopen'ed, unloaded at exit) leave allocations LeakSanitizer reports
# with no symbols, so they cannot be suppressed by name. The expert-parallel dispatch still runs here
# on a job of one rank (tests/dist/test_expert_parallel.cpp); the [mpi] tests run in the Release stage.
moe_configure_asan() {
  moe_step "Configuring ${MOE_ASAN_BUILD_DIR} (MOE_SANITIZE=ON: ASan + UBSan, MOE_NATIVE=${MOE_NATIVE}, no MPI)"
  moe_cmake_configure "$MOE_ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON -DMOE_MPI=OFF \
    -DMOE_NATIVE="$MOE_NATIVE"
}

# Configures MOE_FUZZ_BUILD_DIR: clang++-14 with libFuzzer, only the fuzz_* targets are built.
moe_configure_fuzz() {
  moe_step "Configuring ${MOE_FUZZ_BUILD_DIR} (MOE_FUZZ=ON, clang++-14)"
  local cxx
  cxx="$(command -v clang++-14 || command -v clang++ || true)"
  [ -n "$cxx" ] || moe_die "clang++ not found (Debian: apt-get install ${MOE_FUZZ_PACKAGES[*]})"
  moe_cmake_configure "$MOE_FUZZ_BUILD_DIR" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DMOE_FUZZ=ON -DMOE_BUILD_TESTS=OFF -DMOE_NATIVE="$MOE_NATIVE"
}

# Builds the given targets (default: everything) of MOE_BUILD_DIR with MOE_JOBS parallel jobs.
moe_build() {
  moe_build_in "$MOE_BUILD_DIR" "$@"
}

# Builds the given targets (default: everything) of build directory $1.
moe_build_in() {
  local dir="$1"
  shift
  moe_step "Building ${*:-all targets} in ${dir} (-j${MOE_JOBS})"
  local targets=()
  if [ "$#" -gt 0 ]; then targets=(--target "$@"); fi
  cmake --build "$dir" -j"$MOE_JOBS" "${targets[@]}"
}

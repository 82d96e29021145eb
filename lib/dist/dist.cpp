#include "dist/dist.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "core/error.hpp"

#ifdef MOE_WITH_MPI
#include <mpi.h>
#endif

namespace moe {

namespace {

// Times one collective into the job's counter (and a second one for all-to-alls).
struct CommTimer {
  double& total;
  double* also;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  explicit CommTimer(double& t, double* a = nullptr) : total(t), also(a) {}
  ~CommTimer() {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    total += s;
    if (also) *also += s;
  }
};

#ifdef MOE_WITH_MPI
void mpi_check(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail(std::string("MPI ") + what + " failed: " + std::string(text, size_t(length)));
}

// MPI counts are ints: long arrays go in chunks.
constexpr int64_t kChunk = int64_t(1) << 30;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}
#endif

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

}  // namespace

bool Dist::built_with_mpi() {
#ifdef MOE_WITH_MPI
  return true;
#else
  return false;
#endif
}

bool Dist::launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(var)) return true;
  return false;
}

Dist& Dist::world() {
  static Dist dist = [] {
    Dist d;
#ifdef MOE_WITH_MPI
    if (launched_by_mpi()) {
      int provided = 0;
      mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "Init");
      std::atexit(finalize_at_exit);
      // Errors come back as codes and become one-line moe errors.
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
      MPI_Comm_rank(MPI_COMM_WORLD, &d.rank_);
      MPI_Comm_size(MPI_COMM_WORLD, &d.size_);
      const int local = std::max({env_int("OMPI_COMM_WORLD_LOCAL_SIZE"), env_int("MPI_LOCALNRANKS"), 1});
      d.local_size_ = std::min(local, d.size_);
    }
#endif
    return d;
  }();
  return dist;
}

double Dist::take_comm_seconds() {
  const double s = comm_seconds_;
  comm_seconds_ = 0.0;
  return s;
}

double Dist::take_alltoall_seconds() {
  const double s = alltoall_seconds_;
  alltoall_seconds_ = 0.0;
  return s;
}

void Dist::reduce(void* data, int64_t n, Element element, Op op) {
  if (size_ == 1) return;
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  const MPI_Datatype type = element == Element::f32 ? MPI_FLOAT : element == Element::f64 ? MPI_DOUBLE : MPI_INT64_T;
  const MPI_Op mpi_op = op == Op::sum ? MPI_SUM : op == Op::max ? MPI_MAX : MPI_MIN;
  const int64_t bytes = element == Element::f32 ? 4 : 8;
  for (int64_t i = 0; i < n; i += kChunk)
    mpi_check(MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(data) + i * bytes, int(std::min(kChunk, n - i)), type,
                            mpi_op, MPI_COMM_WORLD),
              "Allreduce");
#else
  (void)data, (void)n, (void)element, (void)op;
#endif
}

void Dist::allreduce_sum(float* data, int64_t n) { reduce(data, n, Element::f32, Op::sum); }
void Dist::allreduce_sum(double* data, int64_t n) { reduce(data, n, Element::f64, Op::sum); }
void Dist::allreduce_sum(int64_t* data, int64_t n) { reduce(data, n, Element::i64, Op::sum); }

int64_t Dist::allreduce_max(int64_t value) {
  reduce(&value, 1, Element::i64, Op::max);
  return value;
}

int64_t Dist::allreduce_min(int64_t value) {
  reduce(&value, 1, Element::i64, Op::min);
  return value;
}

void Dist::alltoall(const int64_t* send, int64_t* recv, int64_t per_rank) {
  if (size_ == 1) {
    std::copy_n(send, per_rank, recv);
    return;
  }
  CommTimer timer(comm_seconds_, &alltoall_seconds_);
#ifdef MOE_WITH_MPI
  check(per_rank <= INT_MAX, "internal: alltoall block too large");
  mpi_check(MPI_Alltoall(send, int(per_rank), MPI_INT64_T, recv, int(per_rank), MPI_INT64_T, MPI_COMM_WORLD),
            "Alltoall");
#endif
}

void Dist::alltoallv(const float* send, const int64_t* send_rows, float* recv, const int64_t* recv_rows,
                     int64_t row_floats) {
  if (size_ == 1) {
    std::copy_n(send, send_rows[0] * row_floats, recv);
    return;
  }
  CommTimer timer(comm_seconds_, &alltoall_seconds_);
#ifdef MOE_WITH_MPI
  // Counts in rows (one contiguous datatype per row) keep them far below INT_MAX.
  MPI_Datatype row;
  mpi_check(MPI_Type_contiguous(int(row_floats), MPI_FLOAT, &row), "Type_contiguous");
  MPI_Type_commit(&row);
  const size_t ranks = static_cast<size_t>(size_);
  std::vector<int> sc(ranks), sd(ranks), rc(ranks), rd(ranks);
  int64_t s_off = 0, r_off = 0;
  for (int q = 0; q < size_; ++q) {
    check(s_off + send_rows[q] <= INT_MAX && r_off + recv_rows[q] <= INT_MAX, "internal: alltoallv too large");
    sc[size_t(q)] = int(send_rows[q]), sd[size_t(q)] = int(s_off), s_off += send_rows[q];
    rc[size_t(q)] = int(recv_rows[q]), rd[size_t(q)] = int(r_off), r_off += recv_rows[q];
  }
  const int code = MPI_Alltoallv(send, sc.data(), sd.data(), row, recv, rc.data(), rd.data(), row, MPI_COMM_WORLD);
  MPI_Type_free(&row);
  mpi_check(code, "Alltoallv");
#endif
}

void Dist::broadcast(uint64_t* data, int64_t n) {
  if (size_ == 1) return;
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  mpi_check(MPI_Bcast(data, int(n), MPI_UINT64_T, 0, MPI_COMM_WORLD), "Bcast");
#else
  (void)data, (void)n;
#endif
}

void Dist::broadcast(float* data, int64_t n) {
  if (size_ == 1) return;
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  for (int64_t i = 0; i < n; i += kChunk)
    mpi_check(MPI_Bcast(data + i, int(std::min(kChunk, n - i)), MPI_FLOAT, 0, MPI_COMM_WORLD), "Bcast");
#else
  (void)data, (void)n;
#endif
}

void Dist::broadcast(std::string& text) {
  if (size_ == 1) return;
  uint64_t n = text.size();
  broadcast(&n, 1);
  text.resize(size_t(n));
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  for (uint64_t i = 0; i < n; i += uint64_t(kChunk))
    mpi_check(MPI_Bcast(text.data() + i, int(std::min<uint64_t>(uint64_t(kChunk), n - i)), MPI_CHAR, 0, MPI_COMM_WORLD),
              "Bcast");
#endif
}

void Dist::send(const float* data, int64_t n, int to) {
  check(size_ > 1 && to != rank_, "internal: send to rank " + std::to_string(to) + " from itself");
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  for (int64_t i = 0; i < n; i += kChunk)
    mpi_check(MPI_Send(data + i, int(std::min(kChunk, n - i)), MPI_FLOAT, to, 0, MPI_COMM_WORLD), "Send");
#else
  (void)data, (void)n;
#endif
}

void Dist::recv(float* data, int64_t n, int from) {
  check(size_ > 1 && from != rank_, "internal: receive on rank " + std::to_string(from) + " from itself");
  CommTimer timer(comm_seconds_);
#ifdef MOE_WITH_MPI
  for (int64_t i = 0; i < n; i += kChunk)
    mpi_check(MPI_Recv(data + i, int(std::min(kChunk, n - i)), MPI_FLOAT, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
              "Recv");
#else
  (void)data, (void)n;
#endif
}

void Dist::on_root(const std::function<void()>& work) {
  std::string error;
  try {
    if (root()) work();
  } catch (const Error& e) {
    error = e.what();
  } catch (const std::bad_alloc&) {
    error = "out of memory";
  }
  raise_root_error(std::move(error));
}

void Dist::raise_root_error(std::string error) {
  if (!root()) error.clear();
  broadcast(error);
  if (!error.empty()) fail(error);
}

int Dist::rank_if_joined() {
#ifdef MOE_WITH_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return 0;
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
#else
  return 0;
#endif
}

}  // namespace moe

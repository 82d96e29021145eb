// The processes of one training job. A build without MPI, or a process not started by an MPI
// launcher (mpirun, srun), is a job of one: every collective is then a copy or nothing. With MPI
// the ranks talk through MPI_COMM_WORLD; every call is collective (all ranks, same order) and is
// made from the main thread outside OpenMP regions (MPI_THREAD_FUNNELED).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace moe {

class Dist {
 public:
  // The job this process belongs to. Joins MPI on first use when started by an MPI launcher;
  // MPI is finalised at process exit.
  static Dist& world();
  // True when an MPI launcher started this process (its environment says so).
  static bool launched_by_mpi();
  // "MPI" or "no MPI" for messages, and whether this binary was built with MPI.
  static bool built_with_mpi();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }
  // Ranks of this job on this machine (for the default thread count); 1 without MPI.
  int local_size() const { return local_size_; }

  // Seconds spent inside collectives since the last take_comm_seconds() (all of them, and the
  // all-to-all exchanges of expert parallelism among them).
  double take_comm_seconds();
  double take_alltoall_seconds();

  // In-place sums over all ranks; every rank gets the same result.
  void allreduce_sum(float* data, int64_t n);
  void allreduce_sum(double* data, int64_t n);
  void allreduce_sum(int64_t* data, int64_t n);
  int64_t allreduce_max(int64_t value);
  int64_t allreduce_min(int64_t value);
  // Exchange of `per_rank` int64 values with every rank: send/recv hold size() blocks.
  void alltoall(const int64_t* send, int64_t* recv, int64_t per_rank);
  // Rows of `row_floats` floats: send_rows[q] consecutive rows go to rank q, recv_rows[q] arrive
  // from rank q, both in rank order.
  void alltoallv(const float* send, const int64_t* send_rows, float* recv, const int64_t* recv_rows,
                 int64_t row_floats);
  // Root's n values to every rank.
  void broadcast(uint64_t* data, int64_t n);
  void broadcast(float* data, int64_t n);
  void broadcast(std::string& text);
  // n floats from this rank to rank `to`, which receives them with recv(..., from = this rank); the
  // messages between two ranks arrive in the order they were sent.
  void send(const float* data, int64_t n, int to);
  void recv(float* data, int64_t n, int from);

  // Runs `work` on the root only; an Error it throws is thrown on every rank with the root's message.
  // A failure only the root can see (the run directory, a checkpoint, a full disk) thus ends the whole
  // job instead of leaving the other ranks waiting in their next collective.
  void on_root(const std::function<void()>& work);
  // The same for an error the root caught itself: `error` is the root's message, "" for none (the
  // other ranks' argument is ignored); thrown on every rank when not empty.
  void raise_root_error(std::string error);
  // This process's rank if it joined an MPI job, else 0; never initialises MPI (for messages).
  static int rank_if_joined();

 private:
  Dist() = default;
  enum class Element { f32, f64, i64 };
  enum class Op { sum, max, min };
  // In-place allreduce of n elements (a no-op for a job of one), timed as communication.
  void reduce(void* data, int64_t n, Element element, Op op);
  int rank_ = 0, size_ = 1, local_size_ = 1;
  double comm_seconds_ = 0.0, alltoall_seconds_ = 0.0;
};

}  // namespace moe

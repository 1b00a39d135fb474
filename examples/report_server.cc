// A server whose worker threads each own a tree of contexts, and which
// answers a local request (a line on a Unix socket) with every worker's
// tree as JSON, written by each worker itself at its next safe point
// (mcx/context/report_request.h). The workers never stop for it: the
// request is a flag, and the answer is written by the worker between two
// allocations, without allocating.
//
//   report_server serve SOCKET [WORKERS]   serve until a "quit" request
//   report_server ask SOCKET [COMMAND]     send COMMAND (default "report"),
//                                          print the answer
//   report_server check SOCKET WORKERS     ask "report" and check the
//                                          answer: well-formed JSON, one
//                                          complete tree per worker
//
// Commands: "report" (JSON: {"workers": [{"worker": ..., "status": ...,
// "report": <the tree>}, ...]}), "text" (each worker's text report), "quit".
// A command is one line; the answer follows at once, and the server closes
// the connection. Clients are served one at a time: one that sends no line
// within kClientTimeout, or reads no answer within it, is dropped, and one
// that goes away early costs the server nothing (no SIGPIPE).

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mcx/context/context.h"
#include "mcx/context/report_request.h"
#include "mcx/context/stats.h"
#include "mcx/freelist/freelist.h"
#include "mcx/pool/pool.h"

namespace {

// How long the server waits for a worker's answer: workers reach a safe
// point every few microseconds, so this is only hit by a stuck worker.
constexpr auto kAnswerTimeout = std::chrono::seconds(10);
// Rows a worker's request allocates, and their size: enough to take new
// blocks (safe points) on every request.
constexpr int kRowsPerRequest = 64;
constexpr size_t kRowBytes = 256;
constexpr int kDefaultWorkers = 3;
constexpr size_t kMaxCommand = 64;
// How long a client may take to send its line, and to read the answer: the
// server serves one client at a time, so a client that stalls holds up the
// others for this long at most.
constexpr int kClientTimeoutSeconds = 2;
// After accept fails for want of resources (descriptors, memory), the
// server waits this long before trying again rather than spinning.
constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

// The workers' report targets, by name. A worker adds its own at start and
// removes it before its endpoint goes; a target copied out stays valid (it
// answers kClosed once the worker is gone).
class Registry {
 public:
  void Add(const std::string& name, mcx::ReportTarget target) {
    std::lock_guard<std::mutex> lock(mu_);
    workers_.emplace_back(name, std::move(target));
  }
  void Remove(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = workers_.begin(); it != workers_.end(); ++it) {
      if (it->first == name) {
        workers_.erase(it);
        return;
      }
    }
  }
  std::vector<std::pair<std::string, mcx::ReportTarget>> Snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return workers_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, mcx::ReportTarget>> workers_;
};

Registry registry;
std::atomic<bool> stopping{false};
std::atomic<int> started{0};

// A worker: a long-lived cache, and a context per request with children for
// its phases, as an engine's backend would have.
void Worker(int index) {
  const std::string name = "worker-" + std::to_string(index);
  mcx::Context* root = mcx::Context::Create(nullptr, name.c_str(), mcx::PoolKind());
  mcx::Context* cache = root->CreateChild("plan cache", mcx::FreelistKind());
  for (int i = 0; i < 10 * (index + 1); ++i) cache->Strdup("SELECT * FROM t WHERE k = $1");
  {
    mcx::ReportEndpoint endpoint(root);
    registry.Add(name, endpoint.target());
    started.fetch_add(1);
    uint64_t checksum = 0;
    while (!stopping.load(std::memory_order_relaxed)) {
      mcx::Context* request = root->CreateChild("request", mcx::PoolKind());
      mcx::Context* parse = request->CreateChild("parse", mcx::PoolKind());
      mcx::Context* execute = request->CreateChild("execute", mcx::FreelistKind());
      parse->Strdup("SELECT count(*) FROM orders");
      for (int r = 0; r < kRowsPerRequest; ++r) {
        auto* row = static_cast<unsigned char*>(execute->Alloc(kRowBytes));
        std::memset(row, r, kRowBytes);
        checksum += row[kRowBytes - 1];
      }
      request->Destroy();
      // An event loop's turn: answers requests even if no block was needed.
      mcx::ServiceRequests();
    }
    registry.Remove(name);
    std::printf("%s: stopped (checksum %llu)\n", name.c_str(),
                static_cast<unsigned long long>(checksum));
  }  // the endpoint goes before its root
  root->Destroy();
}

// Asks every worker at once (posting first, so they answer in parallel),
// then collects the answers.
std::string AskWorkers(bool json) {
  auto workers = registry.Snapshot();
  mcx::ReportOptions options;
  options.format = json ? mcx::ReportFormat::kJson : mcx::ReportFormat::kText;
  std::vector<mcx::RequestStatus> status;
  for (auto& w : workers) {
    mcx::RequestStatus posted = w.second.Post(options);
    // A worker's late answer to an earlier request (given up on after two
    // timeouts) still holds its endpoint: taken and dropped, the endpoint
    // is free again. An answer still being written leaves it busy.
    if (posted == mcx::RequestStatus::kBusy) {
      w.second.Take();
      posted = w.second.Post(options);
    }
    status.push_back(posted);
  }
  std::string out = json ? "{\"workers\": [" : "";
  for (size_t i = 0; i < workers.size(); ++i) {
    mcx::ReportTarget& target = workers[i].second;
    std::string report;
    if (status[i] == mcx::RequestStatus::kPending) {
      status[i] = target.Wait(kAnswerTimeout);
      // A worker that did not answer in time has its request withdrawn;
      // one that had begun answering is waited for.
      if (status[i] == mcx::RequestStatus::kPending && !target.Cancel()) {
        status[i] = target.Wait(kAnswerTimeout);
      }
      report = target.Take();
    }
    if (!json) {
      out += "== " + workers[i].first + " (" + mcx::RequestStatusName(status[i]) + ")\n" + report;
      continue;
    }
    if (i > 0) out += ", ";
    out += "{\"worker\": \"" + workers[i].first + "\", \"status\": \"" +
           mcx::RequestStatusName(status[i]) + "\", \"report\": ";
    if (status[i] == mcx::RequestStatus::kDone) {
      while (!report.empty() && report.back() == '\n') report.pop_back();
      out += report;
    } else {
      out += "null";
    }
    out += "}";
  }
  if (json) out += "]}\n";
  return out;
}

// send(2) with MSG_NOSIGNAL: a peer that has gone is an error (EPIPE), not
// a SIGPIPE that would end the server.
bool WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads until end of file, or up to `max` bytes, or (with `line`) through
// the first newline; a timeout or an error ends it with what came.
std::string Read(int fd, size_t max, bool line) {
  std::string s;
  char buf[4096];
  while (s.size() < max) {
    const size_t want = line ? 1 : std::min(sizeof(buf), max - s.size());
    ssize_t n = read(fd, buf, want);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    s.append(buf, static_cast<size_t>(n));
    if (line && buf[0] == '\n') break;
  }
  return s;
}

// Bounds how long one client can hold the server (kClientTimeoutSeconds).
void SetClientTimeouts(int fd) {
  timeval timeout{};
  timeout.tv_sec = kClientTimeoutSeconds;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
}

bool Address(const char* path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof(addr->sun_path)) {
    std::fprintf(stderr, "socket path too long: %s\n", path);
    return false;
  }
  std::strcpy(addr->sun_path, path);
  return true;
}

int Serve(const char* path, int workers) {
  sockaddr_un addr;
  if (!Address(path, &addr)) return 2;
  unlink(path);
  int listener = socket(AF_UNIX, SOCK_STREAM, 0);
  if (listener < 0 || bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      listen(listener, 4) != 0) {
    std::perror("listen");
    return 2;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) threads.emplace_back(Worker, i);
  while (started.load() < workers) std::this_thread::yield();
  std::printf("serving %d workers on %s\n", workers, path);
  std::fflush(stdout);
  for (bool quit = false; !quit;) {
    int client = accept(listener, nullptr, nullptr);
    if (client < 0) {
      if (errno != EINTR && errno != ECONNABORTED) {
        std::perror("accept");
        std::this_thread::sleep_for(kAcceptBackoff);
      }
      continue;
    }
    SetClientTimeouts(client);
    std::string command = Read(client, kMaxCommand, /*line=*/true);
    while (!command.empty() && (command.back() == '\n' || command.back() == '\r')) {
      command.pop_back();
    }
    std::string reply;
    if (command == "report") {
      reply = AskWorkers(/*json=*/true);
    } else if (command == "text") {
      reply = AskWorkers(/*json=*/false);
    } else if (command == "quit") {
      reply = "bye\n";
      quit = true;
    } else {
      reply = "unknown command '" + command + "': report, text or quit\n";
    }
    WriteAll(client, reply);
    close(client);
  }
  stopping.store(true);
  for (auto& t : threads) t.join();
  close(listener);
  unlink(path);
  return 0;
}

bool Ask(const char* path, const std::string& command, std::string* reply) {
  sockaddr_un addr;
  if (!Address(path, &addr)) return false;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    std::perror("connect");
    return false;
  }
  bool ok = WriteAll(fd, command + "\n");
  shutdown(fd, SHUT_WR);
  *reply = Read(fd, ~size_t{0}, /*line=*/false);
  close(fd);
  return ok;
}

// --- check: a small JSON reader, enough to prove the answer well-formed ---------

class JsonChecker {
 public:
  explicit JsonChecker(const std::string& s) : s_(s) {}
  bool Document() {
    if (!Value()) return false;
    Space();
    return pos_ == s_.size();
  }
  // Values of "worker" members and of trees' root "name" members seen.
  std::vector<std::string> workers, roots;

 private:
  void Space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n')) ++pos_;
  }
  bool Eat(char c) {
    Space();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool String(std::string* out) {
    if (!Eat('"')) return false;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      if (s_[pos_] == '\\') ++pos_;
      if (static_cast<unsigned char>(s_[pos_]) < 0x20) return false;
      out->push_back(s_[pos_++]);
    }
    return Eat('"');
  }
  bool Value() {
    Space();
    if (pos_ >= s_.size()) return false;
    const char c = s_[pos_];
    if (c == '{') return Object();
    if (c == '[') {
      ++pos_;
      if (Eat(']')) return true;
      do {
        if (!Value()) return false;
      } while (Eat(','));
      return Eat(']');
    }
    if (c == '"') {
      std::string ignored;
      return String(&ignored);
    }
    if (s_.compare(pos_, 4, "null") == 0) {
      pos_ += 4;
      return true;
    }
    const size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    return pos_ > start;
  }
  bool Object() {
    ++pos_;
    ++depth_;
    if (Eat('}')) {
      --depth_;
      return true;
    }
    do {
      std::string key;
      if (!String(&key) || !Eat(':')) return false;
      Space();
      if ((key == "worker" || (key == "name" && tree_depth_ == depth_)) && s_[pos_] == '"') {
        std::string value;
        if (!String(&value)) return false;
        (key == "worker" ? workers : roots).push_back(value);
        continue;
      }
      if (key == "tree") tree_depth_ = depth_ + 1;
      if (!Value()) return false;
    } while (Eat(','));
    --depth_;
    return Eat('}');
  }

  const std::string& s_;
  size_t pos_ = 0;
  int depth_ = 0;
  int tree_depth_ = -1;  // the depth of the last "tree" object's members
};

int Check(const char* path, int workers) {
  std::string reply;
  if (!Ask(path, "report", &reply)) return 1;
  JsonChecker checker(reply);
  bool ok = checker.Document();
  if (!ok) std::fprintf(stderr, "check: not well-formed JSON:\n%s\n", reply.c_str());
  ok = ok && static_cast<int>(checker.workers.size()) == workers &&
       checker.roots == checker.workers;
  for (int i = 0; ok && i < workers; ++i) {
    const std::string name = "worker-" + std::to_string(i);
    bool found = false;
    for (const std::string& w : checker.workers) found = found || w == name;
    ok = found;
  }
  const size_t done = [&] {
    size_t n = 0;
    for (size_t at = 0; (at = reply.find("\"status\": \"done\"", at)) != std::string::npos; ++at) ++n;
    return n;
  }();
  ok = ok && static_cast<int>(done) == workers && reply.find("\"grand_total\"") != std::string::npos;
  std::printf("check: %s: %zu workers answered, %zu bytes of JSON\n", ok ? "ok" : "FAILED",
              done, reply.size());
  if (!ok) std::fprintf(stderr, "%s\n", reply.c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::strcmp(argv[1], "serve") == 0) {
    return Serve(argv[2], argc >= 4 ? std::atoi(argv[3]) : kDefaultWorkers);
  }
  if (argc >= 3 && std::strcmp(argv[1], "ask") == 0) {
    std::string reply;
    if (!Ask(argv[2], argc >= 4 ? argv[3] : "report", &reply)) return 1;
    std::fputs(reply.c_str(), stdout);
    return 0;
  }
  if (argc >= 4 && std::strcmp(argv[1], "check") == 0) return Check(argv[2], std::atoi(argv[3]));
  std::fprintf(stderr,
               "usage: report_server serve SOCKET [WORKERS]\n"
               "       report_server ask SOCKET [report|text|quit]\n"
               "       report_server check SOCKET WORKERS\n");
  return 2;
}

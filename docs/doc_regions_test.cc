// Keeps the code in the documents and the code that is compiled the same.
//
// A document quotes a region of a source file with a comment on the line
// before a fenced block:
//
//   <!-- quote: docs/tutorial/02_pool.cc#bump -->
//   ```cpp
//   ...the lines between `// [START bump]` and `// [END bump]`...
//   ```
//
// The block must equal the region, with the region's common indentation
// removed (so a region inside a function reads as top-level code) and with
// any other region's marker lines left out. Marker lines are `// [START
// name]` and `// [END name]` (`# ...` in BUILD files, `/* ... */` in C).
//
// The test fails, with one line per problem, when
//   - a quoted block differs from its region, or names a missing file or
//     region;
//   - a C or C++ block (```cpp, ```c) has no quote comment: every code
//     sample in the documents must be compiled and run by some test;
//   - a region of a source file given on the command line is quoted
//     nowhere, or a region's markers do not pair up.
//
// Usage: doc_regions_test [--fix] FILE...   (.md files are documents, the
// others sources; paths are relative to the workspace root.) Bazel runs it
// as //docs:doc_regions_test. After changing a quoted region, rewrite the
// documents' copies with
//
//   ./mcx bazel run //docs:doc_regions_test -- --fix

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

namespace {

struct Problem {
  std::string where;  // "file:line"
  std::string what;
};

std::vector<Problem> problems;

void Report(const std::string& file, size_t line, const std::string& what) {
  problems.push_back({file + ":" + std::to_string(line), what});
}

bool ReadLines(const std::string& path, std::vector<std::string>* lines) {
  std::ifstream in(path);
  if (!in) return false;
  lines->clear();
  std::string line;
  while (std::getline(in, line)) lines->push_back(line);
  return true;
}

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// If `line` is a region marker, sets `*start` (START or END) and `*name`.
bool ParseMarker(const std::string& line, bool* start, std::string* name) {
  std::string t = Trim(line);
  if (StartsWith(t, "/*") && EndsWith(t, "*/") && t.size() >= 4) {
    t = Trim(t.substr(2, t.size() - 4));
  } else if (StartsWith(t, "//")) {
    t = Trim(t.substr(2));
  } else if (StartsWith(t, "#")) {
    t = Trim(t.substr(1));
  } else {
    return false;
  }
  for (const char* kind : {"[START ", "[END "}) {
    if (StartsWith(t, kind) && EndsWith(t, "]")) {
      *start = kind[1] == 'S';
      const size_t n = std::string(kind).size();
      *name = Trim(t.substr(n, t.size() - n - 1));
      return !name->empty();
    }
  }
  return false;
}

// The regions of one source file, dedented, without marker lines.
struct Source {
  bool loaded = false;
  std::map<std::string, std::vector<std::string>> regions;
};

std::map<std::string, Source> sources;

void Dedent(std::vector<std::string>* lines) {
  size_t indent = std::string::npos;
  for (const std::string& l : *lines) {
    const size_t first = l.find_first_not_of(' ');
    if (first != std::string::npos && first < indent) indent = first;
  }
  for (std::string& l : *lines) {
    l = l.find_first_not_of(' ') == std::string::npos ? "" : l.substr(indent);
  }
}

Source* LoadSource(const std::string& path) {
  Source& src = sources[path];
  if (src.loaded) return &src;
  std::vector<std::string> lines;
  if (!ReadLines(path, &lines)) return nullptr;
  src.loaded = true;
  std::map<std::string, size_t> open;  // name -> line of its START
  for (size_t i = 0; i < lines.size(); ++i) {
    bool start;
    std::string name;
    if (!ParseMarker(lines[i], &start, &name)) {
      for (const auto& o : open) src.regions[o.first].push_back(lines[i]);
      continue;
    }
    if (start) {
      if (open.count(name) != 0 || src.regions.count(name) != 0) {
        Report(path, i + 1, "region '" + name + "' is defined twice");
      }
      open[name] = i + 1;
      src.regions[name];
    } else if (open.erase(name) == 0) {
      Report(path, i + 1, "[END " + name + "] without a [START " + name + "]");
    }
  }
  for (const auto& o : open) Report(path, o.second, "region '" + o.first + "' has no [END]");
  for (auto& r : src.regions) Dedent(&r.second);
  return &src;
}

const char kQuoteOpen[] = "<!-- quote: ";
const char kQuoteClose[] = " -->";

bool IsCompiledLanguage(const std::string& lang) {
  return lang == "cpp" || lang == "c++" || lang == "cc" || lang == "c";
}

std::set<std::pair<std::string, std::string>> quoted;  // (path, region)

// Checks one document; with `fix`, rewrites its quoted blocks from the
// sources and stores the result in `*fixed`.
void CheckDocument(const std::string& path, bool fix, std::vector<std::string>* fixed) {
  std::vector<std::string> lines;
  if (!ReadLines(path, &lines)) {
    Report(path, 0, "cannot read the document");
    return;
  }
  fixed->clear();
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string t = Trim(lines[i]);
    if (!StartsWith(t, "```") || t == "```") {
      fixed->push_back(lines[i]);
      continue;
    }
    // An opening fence: find its end.
    const std::string lang = Trim(t.substr(3));
    size_t end = i + 1;
    while (end < lines.size() && Trim(lines[end]) != "```") ++end;
    if (end == lines.size()) {
      Report(path, i + 1, "code block is not closed");
      fixed->insert(fixed->end(), lines.begin() + static_cast<long>(i), lines.end());
      return;
    }
    std::vector<std::string> body(lines.begin() + static_cast<long>(i) + 1,
                                  lines.begin() + static_cast<long>(end));
    const std::string before = i > 0 ? Trim(lines[i - 1]) : "";
    fixed->push_back(lines[i]);
    if (StartsWith(before, kQuoteOpen) && EndsWith(before, kQuoteClose)) {
      const std::string ref = before.substr(
          sizeof(kQuoteOpen) - 1, before.size() - (sizeof(kQuoteOpen) - 1) - (sizeof(kQuoteClose) - 1));
      const size_t hash = ref.find('#');
      const std::string file = ref.substr(0, hash);
      const std::string region = hash == std::string::npos ? "" : ref.substr(hash + 1);
      const Source* src = LoadSource(file);
      if (hash == std::string::npos || region.empty()) {
        Report(path, i, "quote '" + ref + "' must be PATH#REGION");
      } else if (src == nullptr) {
        Report(path, i, "quote names " + file + ", which cannot be read");
      } else if (src->regions.count(region) == 0) {
        Report(path, i, "quote names region '" + region + "', which " + file + " does not have");
      } else {
        quoted.insert({file, region});
        const std::vector<std::string>& want = src->regions.at(region);
        if (fix) body = want;
        if (body != want) {
          size_t k = 0;
          while (k < body.size() && k < want.size() && body[k] == want[k]) ++k;
          std::ostringstream what;
          what << "block differs from " << file << "#" << region << " at its line " << k + 1
               << ": document has \"" << (k < body.size() ? body[k] : "(end of block)")
               << "\", source has \"" << (k < want.size() ? want[k] : "(end of region)") << "\"";
          Report(path, i + 2 + k, what.str());
        }
      }
    } else if (IsCompiledLanguage(lang)) {
      Report(path, i + 1,
             "```" + lang + " block quotes no compiled source: precede it with "
             "<!-- quote: PATH#REGION --> and put the code in a tested file");
    }
    fixed->insert(fixed->end(), body.begin(), body.end());
    fixed->push_back(lines[end]);
    i = end;
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool fix = false;
  std::vector<std::string> documents;
  std::vector<std::string> source_files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--fix") {
      fix = true;
    } else if (EndsWith(arg, ".md")) {
      documents.push_back(arg);
    } else {
      source_files.push_back(arg);
    }
  }
  if (documents.empty()) {
    std::fprintf(stderr, "usage: doc_regions_test [--fix] DOCUMENT.md... SOURCE...\n");
    return 2;
  }
  // `bazel run` starts in the runfiles; --fix must write the real files.
  if (fix) {
    const char* workspace = std::getenv("BUILD_WORKSPACE_DIRECTORY");
    if (workspace != nullptr && chdir(workspace) != 0) {
      std::fprintf(stderr, "cannot change to %s\n", workspace);
      return 2;
    }
  }
  for (const std::string& f : source_files) {
    if (LoadSource(f) == nullptr) Report(f, 0, "cannot read the source file");
  }
  for (const std::string& doc : documents) {
    std::vector<std::string> fixed;
    CheckDocument(doc, fix, &fixed);
    if (fix) {
      std::ofstream out(doc, std::ios::trunc);
      for (const std::string& l : fixed) out << l << '\n';
    }
  }
  for (const std::string& f : source_files) {
    for (const auto& r : sources[f].regions) {
      if (quoted.count({f, r.first}) == 0) {
        Report(f, 0, "region '" + r.first + "' is quoted by no document");
      }
    }
  }
  for (const Problem& p : problems) std::fprintf(stderr, "%s: %s\n", p.where.c_str(), p.what.c_str());
  if (!problems.empty()) {
    std::fprintf(stderr, "%zu problem(s)%s\n", problems.size(),
                 fix ? "" : "; after changing a region: ./mcx bazel run //docs:doc_regions_test -- --fix");
    return 1;
  }
  std::printf("OK: %zu documents, %zu quoted regions match their sources\n", documents.size(),
              quoted.size());
  return 0;
}

// The DOM of an HTML file as Debian's headless Chromium builds it: the browser check of the reports
// (no script of ours runs in the reports; a test may add a probe script to a copy).
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>

#include <catch2/catch.hpp>

#include "run_moe.hpp"
#include "temp_dir.hpp"

namespace moe_test {

inline const char* const kChromium = "/usr/bin/chromium";

inline std::string chromium_dump_dom(const TempDir& dir, const std::string& html_path) {
  INFO("the browser check needs Debian's chromium at "
       << kChromium << "; scripts/test installs it (MOE_PACKAGES in scripts/lib.sh)");
  REQUIRE(::access(kChromium, X_OK) == 0);
  const std::string profile = dir / "chromium-profile";
  std::filesystem::create_directories(profile);
  const RunResult r =
      run({kChromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           "--window-size=1280,2400", "--user-data-dir=" + profile, "--dump-dom", "file://" + html_path},
          {.timeout_s = 60});
  INFO("chromium exit status " << r.code << ", stderr:\n" << r.err.substr(0, 2000));
  REQUIRE(r.code == 0);
  REQUIRE(r.out.find("</html>") != std::string::npos);
  return r.out;
}

}  // namespace moe_test

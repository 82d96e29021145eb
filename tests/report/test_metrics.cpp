// The load report computed from a recorded metrics.jsonl fixture, and robustness of the reader
// against files that training is still writing or that are damaged.
#include <cmath>
#include <fstream>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../support/temp_dir.hpp"
#include "core/error.hpp"
#include "report/load_console.hpp"
#include "report/metrics.hpp"

using namespace moe;
using moe_test::TempDir;

namespace {

const std::string kFixture = std::string(MOE_SOURCE_DIR) + "/tests/fixtures/metrics_small.jsonl";

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("load report on the fixture: shares, MaxVio and verdicts", "[report]") {
  const RunMetrics run = read_metrics(kFixture);
  REQUIRE(run.train.size() == 20);
  REQUIRE(run.eval.size() == 2);
  CHECK(run.ended);
  const LoadReport r = build_load_report(run, 5);
  CHECK(r.window == 5);
  CHECK(r.early_from == 1);
  CHECK(r.early_to == 5);
  CHECK(r.recent_from == 16);
  CHECK(r.recent_to == 20);
  REQUIRE(r.layers.size() == 2);

  const LayerLoadReport& l1 = r.layers[0];
  CHECK(l1.layer == 1);
  // Early window: counts 8,4,2,2 of 16 each step -> shares 0.5, 0.25, 0.125, 0.125.
  CHECK(l1.experts[0].early == Approx(0.5));
  CHECK(l1.experts[1].early == Approx(0.25));
  CHECK(l1.experts[3].early == Approx(0.125));
  // Recent window: balanced.
  for (const auto& e : l1.experts) CHECK(e.recent == Approx(0.25));
  CHECK(l1.experts[0].min == Approx(0.25));
  CHECK(l1.experts[0].max == Approx(0.5));
  CHECK(l1.experts[2].min == Approx(0.125));
  CHECK(l1.experts[2].bias == Approx(0.02));
  CHECK(l1.experts[0].bias == Approx(-0.02));
  CHECK(l1.early_maxvio == Approx(1.0));
  CHECK(l1.recent_maxvio == Approx(0.0));
  CHECK(l1.verdict == Verdict::balanced);
  CHECK(*l1.global_first == Approx(1.0));
  CHECK(*l1.global_last == Approx(0.0625));
  CHECK(l1.global_last_step == 20);

  const LayerLoadReport& l2 = r.layers[1];
  CHECK(l2.experts[0].recent == Approx(7.0 / 16));
  CHECK(l2.recent_maxvio == Approx(0.75));
  CHECK(l2.early_maxvio == Approx(0.0));
  CHECK(l2.verdict == Verdict::diverging);
  CHECK(l2.maxvio_batch.size() == 20);

  // A layer whose imbalance is falling but still above the threshold is "still converging".
  RunMetrics falling = run;
  for (size_t s = 0; s < falling.train.size(); ++s) falling.train[s].layers[1].maxvio = 2.0 - 0.08 * double(s);
  CHECK(build_load_report(falling, 5).layers[1].verdict == Verdict::converging);

  // The JSON form carries the same numbers.
  const auto j = load_report_json(run, r);
  CHECK(j["layers"][0]["verdict"] == "balanced");
  CHECK(j["layers"][1]["experts"][0]["recent_share"].get<double>() == Approx(7.0 / 16));
  CHECK(j["final_val_loss"].get<double>() == Approx(3.25));
  // The terminal form names both verdicts.
  const std::string text = format_load_report(run, r, false);
  CHECK(text.find("layer 1: balanced") != std::string::npos);
  CHECK(text.find("layer 2: diverging") != std::string::npos);
}

TEST_CASE("a torn last line is skipped with a note and damaged lines are named", "[report]") {
  const TempDir tmp("metrics");
  const std::string full = read_all(kFixture);
  const std::string torn = tmp.write("torn.jsonl", full.substr(0, full.size() - 60));  // cut inside the last eval line
  const RunMetrics run = read_metrics(torn);
  CHECK(run.train.size() == 20);
  CHECK(run.eval.size() == 1);
  CHECK_FALSE(run.ended);
  REQUIRE(run.notes.size() == 1);
  CHECK(run.notes[0].find("incomplete") != std::string::npos);

  const std::string empty = tmp.write("empty.jsonl", "");
  const RunMetrics none = read_metrics(empty);
  CHECK(none.train.empty());
  const LoadReport report = build_load_report(none, 0);
  CHECK(report.layers.empty());
  CHECK(format_load_report(none, report, false).find("no training steps") != std::string::npos);

  // Only train lines: no MaxVio_global, a clear note, no crash.
  std::string train_only;
  for (size_t pos = 0, next; pos < full.size(); pos = next + 1) {
    next = full.find('\n', pos);
    const std::string line = full.substr(pos, next - pos);
    if (line.find("\"train\"") != std::string::npos) train_only += line + "\n";
  }
  const RunMetrics no_eval = read_metrics(tmp.write("noeval.jsonl", train_only));
  const LoadReport r2 = build_load_report(no_eval, 0);
  CHECK_FALSE(r2.layers[0].global_first.has_value());
  CHECK(format_load_report(no_eval, r2, false).find("no evaluation lines") != std::string::npos);

  CHECK_THROWS_WITH(read_metrics(tmp.write("garbage.jsonl", "{\"kind\":\"train\"}\nnot json at all\n{}\n")),
                    Catch::Contains("garbage.jsonl:1") && Catch::Contains("missing field \"step\""));
  CHECK_THROWS_WITH(read_metrics(tmp.write("garbage2.jsonl", "hello\n{}\n")),
                    Catch::Contains("garbage2.jsonl:1") && Catch::Contains("not valid JSON"));
  CHECK_THROWS_WITH(
      read_metrics(tmp.write("types.jsonl", "{\"kind\":\"eval\",\"step\":\"x\",\"val_loss\":1,\"layers\":[]}\n")),
      Catch::Contains("types.jsonl:1") && Catch::Contains("\"step\""));
  CHECK_THROWS_WITH(read_metrics(tmp.write("kind.jsonl", "{\"kind\":\"weird\",\"step\":1}\n")),
                    Catch::Contains("unknown kind"));
  CHECK_THROWS_WITH(read_metrics("/nonexistent/metrics.jsonl"), Catch::Contains("cannot open"));
}

TEST_CASE("metrics with null numbers (non-finite when written) and report lines of any length", "[report]") {
  // Training writes a non-finite number as null: the reader takes it as NaN (optional fields too),
  // and the report skips it. A 300-character data path and a loss of 1e300 keep their lines whole.
  const TempDir tmp("metrics_null");
  const std::string layers = "\"layers\":[{\"layer\":1,\"counts\":[3,1],\"maxvio\":0.5,\"bias\":[null,0.0]}]";
  const std::string path = tmp.write(
      "metrics.jsonl",
      "{\"kind\":\"train\",\"step\":1,\"loss\":4.0,\"grad_norm\":1.0,\"mtp_loss\":4.5," + layers + "}\n" +
          "{\"kind\":\"train\",\"step\":2,\"loss\":null,\"grad_norm\":null,\"mtp_loss\":null,\"skipped\":true," +
          layers + "}\n" + "{\"kind\":\"eval\",\"step\":1,\"val_loss\":3.5,\"mtp_val_loss\":3.75," + layers + "}\n" +
          "{\"kind\":\"eval\",\"step\":2,\"val_loss\":null,\"mtp_val_loss\":null," + layers + "}\n");
  RunMetrics run = read_metrics(path);
  REQUIRE(run.train.size() == 2);
  REQUIRE(run.eval.size() == 2);
  CHECK(std::isnan(run.train[1].loss));
  CHECK(std::isnan(run.train[1].grad_norm));
  REQUIRE(run.train[1].mtp_loss.has_value());
  CHECK(std::isnan(*run.train[1].mtp_loss));
  CHECK(std::isnan(run.train[0].layers[0].bias[0]));
  REQUIRE(run.last_mtp_eval() != nullptr);
  CHECK(run.last_mtp_eval()->step == 1);  // the null one is skipped
  CHECK(run.final_val_text() == "3.5000 (step 1)");
  LoadReport report = build_load_report(run, 1);
  std::string text = format_load_report(run, report, false);
  CHECK(text.find("\n  final validation loss: 3.5000 (step 1)\n") != std::string::npos);
  CHECK(text.find("\n  final MTP validation loss: 3.7500 (step 1;") != std::string::npos);

  run.settings = RunSettings{};
  run.settings->balance = "none";
  run.settings->data = std::string(300, 'd');
  run.eval[0].val_loss = 1e300;
  run.eval[0].mtp_val_loss = 1e300;
  text = format_load_report(run, report, false);
  CHECK(text.find(run.settings->data + "\n  final validation loss: 1") != std::string::npos);
  CHECK(text.find("\n  final MTP validation loss: 1") != std::string::npos);
  CHECK(text.find(" (step 1; the module's loss on the token after next)\n") != std::string::npos);
  const std::string table = format_comparison({&run, &run}, {&report, &report}, false);
  CHECK(table.find(run.settings->data + "\n") != std::string::npos);
  CHECK(table.find("*: mtp_weight 0") == std::string::npos);
  // A run trained with mtp_weight 0 evaluated an untrained module: said so, marked in the table.
  run.settings->mtp_weight = 0.0;
  CHECK(format_load_report(run, report, false).find("; untrained: mtp_weight 0)") != std::string::npos);
  const std::string marked = format_comparison({&run}, {&report}, false);
  CHECK(marked.find(".0000*") != std::string::npos);  // 1e300 printed whole, marked
  CHECK(marked.find("*: mtp_weight 0, the MTP module's loss untrained") != std::string::npos);
  // The last finite evaluation everywhere: a null (NaN) last val_loss is not "the last".
  run.eval[0].val_loss = 2.5;
  CHECK(format_comparison({&run}, {&report}, false).find(" 2.5000 ") != std::string::npos);
  CHECK(load_report_json(run, report).at("final_val_loss").get<double>() == 2.5);
}

TEST_CASE("sparkline squeezes a series into block characters", "[report]") {
  const std::string s = sparkline({0, 1, 2, 3, 4, 5, 6, 7}, 8);
  CHECK(s == "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588");
  CHECK(sparkline({}, 10).empty());
  CHECK(sparkline({1, 1, 1, 1}, 2) == "\u2588\u2588");
}

TEST_CASE("metrics of a run on several ranks give per-rank rows with their MaxVio and the communication share",
          "[report]") {
  const TempDir tmp("metrics");
  const std::string path = tmp / "ranks_metrics.jsonl";
  {
    std::ofstream out(path);
    for (int step = 1; step <= 2; ++step) {
      nlohmann::json line = {
          {"kind", "train"},
          {"step", step},
          {"loss", 3.0},
          {"lr", 0.001},
          {"grad_norm", 1.0},
          {"tokens_per_s", 1000.0},
          {"seconds", 0.5},
          {"balance_loss", 0.0},
          {"layers", {{{"layer", 1}, {"counts", {30, 10, 20, 20}}, {"maxvio", 0.5}, {"bias", {0.0, 0.0, 0.0, 0.0}}}}}};
      // rows per rank: 40 / 40 at step 1, 60 / 20 at step 2 -> MaxVio 0 then 0.5
      line["ranks"] = {{"n", 2},
                       {"comm_seconds", 0.1},
                       {"layers",
                        {{{"layer", 1},
                          {"rows", step == 1 ? std::vector<int>{40, 40} : std::vector<int>{60, 20}},
                          {"maxvio", step == 1 ? 0.0 : 0.5}}}}};
      out << line.dump() << "\n";
    }
  }
  const moe::RunMetrics run = moe::read_metrics(path);
  REQUIRE(run.train.size() == 2);
  CHECK(run.train[1].ranks == 2);
  CHECK(run.train[1].comm_seconds == 0.1);
  CHECK(run.train[1].layers[0].rank_rows == std::vector<int64_t>{60, 20});
  const std::string text = moe::format_load_report(run, moe::build_load_report(run, 0), false);
  INFO(text);
  CHECK(text.find("ranks: 2 processes; 20.0% of step time in MPI collectives") != std::string::npos);
  CHECK(text.find("rows per rank at step 2: 60 20   MaxVio_ranks 0.000 @1 -> 0.500 @2") != std::string::npos);
  // A wrong type inside "ranks" is named like any other field.
  {
    std::ofstream out(path);
    out << R"({"kind":"train","step":1,"loss":1,"lr":1,"grad_norm":1,"tokens_per_s":1,"balance_loss":0,"layers":[],)"
        << R"("ranks":{"n":"two","comm_seconds":0,"layers":[]}})"
        << "\n";
  }
  CHECK_THROWS_WITH(moe::read_metrics(path), Catch::Contains("\"n\" has the wrong type"));
}

TEST_CASE("the runs' comparison keeps names that differ anywhere apart; no MaxVio without MoE layers", "[report]") {
  // Grid sweep names: long, alike at the end, different at the start.
  RunMetrics a, b;
  a.name = "first_k_dense_replace=0,num_nextn_predict_layers=1";
  b.name = "first_k_dense_replace=3,num_nextn_predict_layers=1";
  RunMetrics c;
  c.name = std::string(40, 'x') + "-long-middle-" + std::string(40, 'y') + "-end";
  const LoadReport none;  // no MoE layer
  const std::string table = format_comparison({&a, &b, &c}, {&none, &none, &none}, false);
  CHECK(table.find(a.name) != std::string::npos);
  CHECK(table.find(b.name) != std::string::npos);
  CHECK(table.find(c.name) != std::string::npos);  // uncut
  // The row of a: no eval, no load: dashes, not zeros.
  const std::string row = table.substr(table.find(a.name));
  CHECK(row.substr(0, row.find('\n')).find("0.000") == std::string::npos);
}

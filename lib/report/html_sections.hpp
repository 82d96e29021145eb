// Internal to the HTML report (html.cpp lays out the page, html_sections.cpp writes what is on it):
// the sections of the page, each a complete <section> element.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "report/html.hpp"

namespace moe {

// The id of run i's section, for links from the navigation and the comparison table.
std::string run_anchor(size_t run_index);

// One run: facts, model summary, loss and MaxVio charts, and per MoE layer its charts and load table.
std::string run_section(const HtmlRun& run, size_t run_index, size_t run_count);

// Several runs side by side: a table of final numbers and MaxVio / validation-loss curves.
std::string comparison_section(const std::vector<HtmlRun>& runs);

}  // namespace moe

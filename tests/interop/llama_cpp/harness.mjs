// Runs a GGUF file in a real llama.cpp (the prebuilt CPU build that node-llama-cpp 3.21.1 ships) and
// prints what the [llama_cpp] test compares with moe, as one JSON document:
//
//   node harness.mjs REQUEST.json
//
// REQUEST: {"model": "F.gguf", "texts": ["...", ...], "prompts": ["...", ...], "n": 64, "score": [ids]}
//   texts  -> "tokens": llama.cpp's tokenization of each text (no BOS, no special tokens), and
//             "detokenized": the text its detokenizer makes of those ids
//   prompts -> "greedy": for each prompt, n tokens from llama.cpp's own sampler at temperature 0
//   score  -> "nll", "scored": teacher-forced mean -ln p(score[i+1] | score[0..i]) over i = 0..len-2,
//             from llama.cpp's full next-token distributions
//
// One thread: llama.cpp's default on this 2-core machine (4 threads) spin-waits against Node's own
// threads and takes ~0.7 s per token instead of ~1 ms.
import {readFileSync} from "node:fs";
import {createRequire} from "node:module";
import {pathToFileURL} from "node:url";

// scripts/test installs the pinned package (package.json, package-lock.json here) into .llama_cpp/
// at the project root, outside tests/ so that CMake's test glob never walks its llama.cpp sources.
const modules = new URL("../../../.llama_cpp/", import.meta.url);
const {getLlama} = await import(pathToFileURL(createRequire(modules).resolve("node-llama-cpp")));

const request = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath: request.model});
const result = {};

if (request.texts) {
  result.tokens = request.texts.map((text) => Array.from(model.tokenize(text, false)));
  result.detokenized = result.tokens.map((ids) => model.detokenize(ids));
}

// The KV cache in F32 (llama.cpp defaults to F16, which alone moves the mean NLL by ~7e-3 here).
const cache = {experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", flashAttention: false};

async function sequence(size) {
  const context = await model.createContext({contextSize: size, batchSize: size, threads: 1, ...cache});
  return context.getSequence();
}

if (request.prompts) {
  result.greedy = [];
  for (const prompt of request.prompts) {
    const seq = await sequence(512);
    const greedy = [];
    if (request.n > 0) {
      for await (const token of seq.evaluate(model.tokenize(prompt, false), {temperature: 0})) {
        greedy.push(token);
        if (greedy.length >= request.n) break;
      }
    }
    result.greedy.push(greedy);
    await seq.context.dispose();
  }
}

if (request.score) {
  const ids = request.score;
  const seq = await sequence(Math.max(512, ids.length));
  const input = ids.slice(0, -1).map((id) => [id, {generateNext: {probabilities: true}}]);
  const outputs = await seq.controlledEvaluate(input);
  let sum = 0;
  for (let i = 0; i + 1 < ids.length; ++i) {
    const p = outputs[i]?.next?.probabilities?.get(ids[i + 1]);
    if (!(p > 0)) throw new Error(`no probability for token ${ids[i + 1]} at position ${i}`);
    sum -= Math.log(p);
  }
  result.scored = ids.length - 1;
  result.nll = sum / result.scored;
}

console.log(JSON.stringify(result));

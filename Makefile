# qrm pipeline stages as file targets: a rerun redoes only what changed.
#
#   make demo    the main job on the embedded default task (README's first command)
#   make test    the test suite (README's second command; CI runs it)
#
# Sizes and seeds are variables: `make demo QUESTIONS=400 STEPS=60`.
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release
MODEL := .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
SEED ?= 1

# ---- the demo's sizes (chosen to fit ~15 minutes on a 2-core CPU; reports/demo states them)
QUESTIONS ?= 80
SAMPLES ?= 8
HOLDOUT ?= 0.5
TRAIN_LAYERS ?= 2
BATCH ?= 8
STEPS ?= 20
LR ?= 1e-4
W := .cache/demo
D := reports/demo

.PHONY: test build demo model clean-demo
.DELETE_ON_ERROR:

# $(call) splits its arguments on commas, so lists inside a timed command use these.
comma := ,
PERCENTILES := 0$(comma)0.1$(comma)0.2$(comma)0.3$(comma)0.4$(comma)0.5$(comma)0.6$(comma)0.7$(comma)0.8$(comma)0.9$(comma)1

test:
	$(CARGO) test --all-targets

build:
	$(CARGO) build --release --bins

model: $(MODEL)
$(MODEL): scripts/install-model.sh
	bash scripts/install-model.sh $(dir $@) >/dev/null

# Runs a stage and appends its wall time to the timings table the report shows.
timed = @mkdir -p $(W); start=$$(date +%s.%N); $(2) && end=$$(date +%s.%N) && \
	awk -v s=$$start -v e=$$end -v n='$(1)' 'BEGIN { printf "%s\t%.1f\n", n, e - s }' >> $(W)/timings.tsv

$(W)/generations.parquet: | build
	$(call timed,synth,$(BIN)/qrm-synth --questions $(QUESTIONS) --samples $(SAMPLES) --split both --seed $(SEED) -o $@)

$(W)/pairs.parquet $(W)/held.parquet &: $(W)/generations.parquet
	$(call timed,pairs,$(BIN)/qrm-pairs $< --split-questions $(HOLDOUT) --seed $(SEED) --holdout $(W)/held.parquet -o $(W)/pairs.parquet)

TRAIN_FLAGS = --model $(MODEL) --train-layers $(TRAIN_LAYERS) --batch-size $(BATCH) --micro-batch $(BATCH) \
	--max-steps $(STEPS) --lr $(LR) --seed $(SEED) --cache $(W)/trunk --eval-every 10

$(W)/bt/config.json: $(W)/pairs.parquet $(MODEL)
	$(call timed,train-bt,$(BIN)/qrm-train $< --objective bt $(TRAIN_FLAGS) --log $(W)/train-bt.jsonl -o $(W)/bt)

$(W)/q/config.json: $(W)/pairs.parquet $(MODEL) $(W)/bt/config.json
	$(call timed,train-q,$(BIN)/qrm-train $< --objective q $(TRAIN_FLAGS) --log $(W)/train-q.jsonl -o $(W)/q)

$(W)/goal-%.safetensors: $(W)/pairs.parquet $(W)/%/config.json
	$(call timed,embed-$*,$(BIN)/qrm-embed $< --rm $(W)/$* -o $@)

$(W)/scores-%.parquet: $(W)/held.parquet $(W)/goal-%.safetensors
	$(call timed,score-$*,$(BIN)/qrm-score $< --rm $(W)/$* --goal $(W)/goal-$*.safetensors --emit-tokens -o $@)

# Goal states are named here so make treats them as results, not intermediates to delete.
$(W)/scores.parquet: $(W)/scores-bt.parquet $(W)/scores-q.parquet | $(W)/goal-bt.safetensors $(W)/goal-q.safetensors
	$(BIN)/qrm-cat $(W)/scores-bt.parquet $(W)/scores-q.parquet -o $@

# ---- report tables and figures (Markdown tables are rendered from the runs' own output)
$(D)/auroc.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-auroc $< --plot $(D)/auroc.png -q -o $(W)/auroc.parquet
	$(call timed,auroc,$(BIN)/qrm-auroc $< --compare bt$(comma)q --format markdown -o $@)

$(D)/partial.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,partial,$(BIN)/qrm-auroc $< --percentiles $(PERCENTILES) --ci samples --plot $(D)/partial.png --format markdown -o $@)

$(D)/filter.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,filter,$(BIN)/qrm-filter $< --format markdown -o $@)

$(D)/filter-reference.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-filter $< --vote reference --format markdown -o $@

$(D)/sweep.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-filter $< --sweep=-0.3:0.5:0.1 --plot $(D)/sweep.png --format markdown -o $@

$(D)/topk.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-filter $< --top-k 1,2,4,8 --format markdown -o $@

$(D)/correlation.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-filter $< --correlation --format markdown -o $@

$(D)/training.png: $(W)/q/config.json
	@mkdir -p $(D)
	$(BIN)/qrm-plot training $(W)/train-q.jsonl -o $@
	$(BIN)/qrm-plot training $(W)/train-bt.jsonl -o $(D)/training-bt.png

$(D)/tokens.svg: $(W)/scores-q.parquet
	@mkdir -p $(D)
	$(BIN)/qrm-plot tokens $< --row 1 -o $@

DEMO_PARTS := $(D)/auroc.md $(D)/partial.md $(D)/filter.md $(D)/filter-reference.md $(D)/sweep.md \
	$(D)/topk.md $(D)/correlation.md $(D)/training.png $(D)/tokens.svg

$(D)/README.md: $(DEMO_PARTS) scripts/demo-report.sh
	QUESTIONS=$(QUESTIONS) SAMPLES=$(SAMPLES) HOLDOUT=$(HOLDOUT) STEPS=$(STEPS) BATCH=$(BATCH) \
	LR=$(LR) TRAIN_LAYERS=$(TRAIN_LAYERS) SEED=$(SEED) \
	bash scripts/demo-report.sh $(W) $(D) > $@.tmp && mv $@.tmp $@

demo: $(D)/README.md
	@echo "wrote $(D)/README.md" >&2

clean-demo:
	rm -rf $(W) $(D)

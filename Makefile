# qrm pipeline stages as file targets: a rerun redoes only what changed.
#
#   make demo         the main job on the embedded default task (README's first command)
#   make repro-gsm8k  the same chain on real GSM8K generations (ZeroEval, 42 LLMs), ~1 hour
#   make learning     does training learn? BT and Q eval accuracy on independent synthetic pairs
#   make prm800k      step-level AUROC and error localisation on PRM800K's human step labels
#   make test         the test suite (README's second command; CI runs it)
#   make score-sharded SHARDS=n   qrm-score as n parallel local shards, merged (docs/sharded-scoring.md)
#   make serve-check  qrm-serve against OpenRLHF's client, under load and faults (docs/serving.md)
#
# Sizes and seeds are variables: `make demo QUESTIONS=400 STEPS=60`,
# `make repro-gsm8k ZEROEVAL=my.jsonl.gz MAX_QUESTIONS=800`.
CARGO ?= cargo
BIN := $(or $(CARGO_TARGET_DIR),target)/release
MODEL := .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
SEED ?= 1
TASK ?= demo
TRAIN_LAYERS ?= 2

ifeq ($(TASK),gsm8k)
# ---- real data: a seeded subset of questions, question-disjoint split, the held-out questions
# scored with a seeded subset of their 42 models' solutions (sized to ~1 hour on 2 cores).
ZEROEVAL ?= ../shared/data/zeroeval/gsm8k_test_42models.jsonl.gz
MAX_QUESTIONS ?= 400
HOLDOUT ?= 0.15
HOLDOUT_SAMPLES ?= 12
PER_QUESTION ?= 1
BATCH ?= 16
# Micro-batches by padded tokens, not pairs: 16 GSM8K pairs at once padded to ~1,000 tokens
# (~32k padded tokens) needed > 20 GiB for the differentiable attention and were killed on a
# 24 GiB machine; 16384 holds about 8 such pairs, and more of the short ones.
MICRO_BATCH_TOKENS ?= 16384
MICRO_FLAGS = --micro-batch-tokens $(MICRO_BATCH_TOKENS)
STEPS ?= 36
LR ?= 1e-3
CENTER ?= 0
NEGATIVE_GOALS ?= anywhere
RM_TRAIN_LAYERS ?= $(TRAIN_LAYERS)
CROSS_PAIRS ?= 0
EMBED_LIMIT ?= 96
PAIRS_FLAGS = --max-questions $(MAX_QUESTIONS) --holdout-samples $(HOLDOUT_SAMPLES) --max-per-question $(PER_QUESTION)
W := .cache/gsm8k
D := reports/gsm8k
# No first error is known in real data: the calibrated table has no localisation columns.
CALIBRATED_FLAGS :=
else
# ---- the demo's sizes (reports/demo states what its stages took). With restated lines and 6
# trained layers, 300 questions and 120 steps reach an eval pooled AUROC of 0.87 in training (0.95 at 160)
# (reports/learning/2026-12-03-restate.md); the 600 questions and 240 steps the 2-layer recipe
# needed (reports/learning/recipe.md) would double the time.
# QUESTIONS in-distribution questions, HOLDOUT of them held out, the rest paired for training;
# OOD_QUESTIONS out-of-distribution questions, all held out.
QUESTIONS ?= 300
OOD_QUESTIONS ?= 30
SAMPLES ?= 8
# Mistakes found by comparing spans, mid-solution (a number copied wrongly from the question, a
# result carried wrongly), with a question's samples sharing one phrasing and every line quoting
# the question's sentence for its step (`restate`): reports/learning measures why (SmolLM2-135M
# learns neither realistic slips nor per-sample phrasings from a laptop-sized run, and notices a
# miscopied number itself only where it stands in the question's words).
MISTAKES ?= span
PHRASING ?= restate
HOLDOUT ?= 0.15
# Many questions, few pairs each: with 8 pairs a question from 54 training questions the RMs
# memorised the questions (eval accuracy fell below 0.5 as the training loss fell).
PER_QUESTION ?= 2
BATCH ?= 8
MICRO_BATCH ?= 8
MICRO_FLAGS = --micro-batch $(MICRO_BATCH)
# reports/learning/recipe.md: the runs that chose these (steps, reward centering, where the
# contrastive loss draws its negative goals), with what failed.
STEPS ?= 120
LR ?= 1e-3
CENTER ?= 0
NEGATIVE_GOALS ?= after-divergence
# The demo's RMs train the top 6 layers (from layer 24, whose states carry the mistake; a
# linear probe on the last token's state does not see it) with cross-question pairs, so rewards
# rank across questions: reports/learning/2026-12-03-restate.md.
RM_TRAIN_LAYERS ?= 6
CROSS_PAIRS ?= 1
EMBED_LIMIT ?= 64
# Every correct × incorrect combination (up to PER_QUESTION a question): more pairs from the
# same responses, and the frozen trunk is computed once per distinct response.
PAIRS_FLAGS = --reuse --max-per-question $(PER_QUESTION)
W := .cache/demo
D := reports/demo
CALIBRATED_FLAGS := --localise
endif

.PHONY: serve-check score-sharded test build demo repro-gsm8k learning prm800k cuda-dist report model clean-demo clean-gsm8k clean-learning clean-prm800k
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

# Runs a stage, then appends its wall time to the timings table and its command (with the
# binaries' directory left out) to the commands list the report shows.
timed = @mkdir -p $(W); start=$$(date +%s.%N); $(2) && end=$$(date +%s.%N) && \
	awk -v s=$$start -v e=$$end -v n='$(1)' 'BEGIN { printf "%s\t%.1f\n", n, e - s }' >> $(W)/timings.tsv && \
	printf '%s\t%s\n' '$(1)' '$(subst ','\'',$(subst $(BIN)/,,$(2)))' >> $(W)/commands.tsv

$(W)/generations.parquet: | build
ifeq ($(TASK),gsm8k)
	$(call timed,import,$(BIN)/qrm-import $(ZEROEVAL) -o $@)
else
	$(call timed,synth,$(BIN)/qrm-synth --questions $(QUESTIONS) --samples $(SAMPLES) --split id --mistakes $(MISTAKES) --phrasing $(PHRASING) --seed $(SEED) -o $@)

# As in the paper, out-of-distribution questions are for evaluation only.
$(W)/ood.parquet: | build
	$(call timed,synth-ood,$(BIN)/qrm-synth --questions $(OOD_QUESTIONS) --samples $(SAMPLES) --split ood --mistakes $(MISTAKES) --phrasing $(PHRASING) --seed $(SEED) -o $@)
endif

$(W)/pairs.parquet $(W)/held-id.parquet &: $(W)/generations.parquet
	$(call timed,pairs,$(BIN)/qrm-pairs $< --split-questions $(HOLDOUT) $(PAIRS_FLAGS) --seed $(SEED) --holdout $(W)/held-id.parquet -o $(W)/pairs.parquet)

ifeq ($(TASK),gsm8k)
$(W)/held.parquet: $(W)/held-id.parquet
	cp $< $@
else
$(W)/held.parquet: $(W)/held-id.parquet $(W)/ood.parquet
	$(call timed,held,$(BIN)/qrm-cat $(W)/held-id.parquet $(W)/ood.parquet -o $@)
endif

TRAIN_FLAGS = --model $(MODEL) --train-layers $(RM_TRAIN_LAYERS) --batch-size $(BATCH) $(MICRO_FLAGS) \
	--max-steps $(STEPS) --lr $(LR) --center-rewards $(CENTER) --cross-pairs $(CROSS_PAIRS) --seed $(SEED) \
	--cache $(W)/trunk --eval-every 10

$(W)/bt/config.json: $(W)/pairs.parquet $(MODEL)
	$(call timed,train-bt,$(BIN)/qrm-train $< --objective bt $(TRAIN_FLAGS) --log $(W)/train-bt.jsonl -o $(W)/bt)

$(W)/q/config.json: $(W)/pairs.parquet $(MODEL) $(W)/bt/config.json
	$(call timed,train-q,$(BIN)/qrm-train $< --objective q --negative-goals $(NEGATIVE_GOALS) $(TRAIN_FLAGS) --log $(W)/train-q.jsonl -o $(W)/q)

$(W)/goal-%.safetensors: $(W)/pairs.parquet $(W)/%/config.json
	$(call timed,embed-$*,$(BIN)/qrm-embed $< --rm $(W)/$* --limit $(EMBED_LIMIT) --seed $(SEED) -o $@)

$(W)/scores-%.parquet: $(W)/held.parquet $(W)/goal-%.safetensors
	$(call timed,score-$*,$(BIN)/qrm-score $< --rm $(W)/$* --goal $(W)/goal-$*.safetensors --emit-tokens -o $@)

# Goal states are named here so make treats them as results, not intermediates to delete.
$(W)/scores.parquet: $(W)/scores-bt.parquet $(W)/scores-q.parquet | $(W)/goal-bt.safetensors $(W)/goal-q.safetensors
	$(call timed,cat,$(BIN)/qrm-cat $(W)/scores-bt.parquet $(W)/scores-q.parquet -o $@)

# ---- report tables and figures (Markdown tables are rendered from the runs' own output)
$(D)/auroc.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,auroc-plot,$(BIN)/qrm-auroc $< --plot $(D)/auroc.png -q -o $(W)/auroc.parquet)
	$(call timed,auroc,$(BIN)/qrm-auroc $< --compare bt$(comma)q --format markdown -o $@)

# The same comparison within questions (`--within question_id`): only pairs of one question's
# samples, the ones majority voting and Q-filtering compare; cluster-bootstrap intervals.
$(D)/auroc-within.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,auroc-within,$(BIN)/qrm-auroc $< --compare bt$(comma)q --within question_id --seed $(SEED) --format markdown -o $@)

$(D)/partial.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,partial,$(BIN)/qrm-auroc $< --percentiles $(PERCENTILES) --ci samples --plot $(D)/partial.png --format markdown -o $@)

# The Q-value itself along the response: at each tenth, the Q-value there (`q_last`) and its
# running minimum (`q_min`, what Q-filtering thresholds).
$(D)/partial-q.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,partial-q,$(BIN)/qrm-auroc $< --score q_last --percentiles $(PERCENTILES) --ci samples --format markdown -o $@)
	$(call timed,partial-qmin,$(BIN)/qrm-auroc $< --score q_min --percentiles $(PERCENTILES) --ci samples --plot $(D)/partial-qmin.png --format markdown -o $(D)/partial-qmin.md)

$(D)/filter.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,filter,$(BIN)/qrm-filter $< --format markdown -o $@)

$(D)/filter-reference.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,filter-reference,$(BIN)/qrm-filter $< --vote reference --format markdown -o $@)

# Calibrated thresholds: θ per RM from half of the held-out questions (question-disjoint,
# seeded), reported on the other half.
$(D)/calibrated.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,calibrated,$(BIN)/qrm-filter $< --calibrate-fraction 0.5 --seed $(SEED) --max-false-drop 0.1 $(CALIBRATED_FLAGS) --format markdown -o $@)

$(D)/sweep.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,sweep,$(BIN)/qrm-filter $< --calibrate-fraction 0.5 --seed $(SEED) --sweep-alpha 0.05:0.5:0.05 --plot $(D)/sweep.png --format markdown -o $@)

$(D)/sweep-threshold.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,sweep-threshold,$(BIN)/qrm-filter $< --sweep=-0.3:0.5:0.1 --plot $(D)/sweep-threshold.png --format markdown -o $@)

$(D)/topk.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,topk,$(BIN)/qrm-filter $< --top-k 1$(comma)2$(comma)4$(comma)8 --format markdown -o $@)

$(D)/correlation.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,correlation,$(BIN)/qrm-filter $< --correlation --format markdown -o $@)

$(D)/localisation.md: $(W)/scores.parquet
	@mkdir -p $(D)
	$(call timed,localisation,$(BIN)/qrm-filter $< --localise --sweep=-0.2:0.4:0.2 --format markdown -o $@)

$(D)/training.png: $(W)/q/config.json
	@mkdir -p $(D)
	$(call timed,plot-training,$(BIN)/qrm-plot training $(W)/train-q.jsonl -o $@)
	$(call timed,plot-training-bt,$(BIN)/qrm-plot training $(W)/train-bt.jsonl -o $(D)/training-bt.png)

$(D)/tokens.svg: $(W)/scores-q.parquet
	@mkdir -p $(D)
	$(call timed,plot-tokens,$(BIN)/qrm-plot tokens $< --row 1 -o $@)

DEMO_PARTS := $(D)/auroc.md $(D)/auroc-within.md $(D)/partial.md $(D)/partial-q.md $(D)/filter.md $(D)/filter-reference.md $(D)/calibrated.md \
	$(D)/sweep.md $(D)/sweep-threshold.md \
	$(D)/topk.md $(D)/correlation.md $(D)/training.png $(D)/tokens.svg
ifneq ($(TASK),gsm8k)
DEMO_PARTS += $(D)/localisation.md
endif

$(D)/README.md: $(DEMO_PARTS) scripts/demo-report.sh
	TASK=$(TASK) QUESTIONS=$(QUESTIONS) OOD_QUESTIONS=$(OOD_QUESTIONS) SAMPLES=$(SAMPLES) MISTAKES=$(MISTAKES) PHRASING=$(PHRASING) HOLDOUT=$(HOLDOUT) \
	STEPS=$(STEPS) BATCH=$(BATCH) MICRO_BATCH=$(MICRO_BATCH) MICRO_BATCH_TOKENS=$(MICRO_BATCH_TOKENS) LR=$(LR) TRAIN_LAYERS=$(RM_TRAIN_LAYERS) SEED=$(SEED) MODEL=$(MODEL) \
	CENTER=$(CENTER) CROSS_PAIRS=$(CROSS_PAIRS) NEGATIVE_GOALS=$(NEGATIVE_GOALS) EMBED_LIMIT=$(EMBED_LIMIT) ZEROEVAL=$(ZEROEVAL) MAX_QUESTIONS=$(MAX_QUESTIONS) \
	HOLDOUT_SAMPLES=$(HOLDOUT_SAMPLES) PER_QUESTION=$(PER_QUESTION) \
	bash scripts/demo-report.sh $(W) $(D) > $@.tmp && mv $@.tmp $@

report: $(D)/README.md
	@echo "wrote $(D)/README.md" >&2

demo:
	@$(MAKE) --no-print-directory TASK=demo report

repro-gsm8k:
	@test -f $(or $(ZEROEVAL),../shared/data/zeroeval/gsm8k_test_42models.jsonl.gz) || \
		{ echo "no ZeroEval data at $(or $(ZEROEVAL),../shared/data/zeroeval/gsm8k_test_42models.jsonl.gz); set ZEROEVAL=" >&2; exit 1; }
	@$(MAKE) --no-print-directory TASK=gsm8k report

# ---- sharded scoring on one machine (docs/sharded-scoring.md): SHARDS qrm-score processes, each
# `--shard i/SHARDS`, then `qrm-score merge` back into input order. By default a synthetic
# sample-set table and the default model with an untrained linear head, so it runs from a fresh
# clone; SCORE_INPUT, SCORE_RM, SCORE_FLAGS and SCORE_OUT choose real ones.
SHARDS ?= 2
SHARD_DIR := .cache/sharded
SCORE_INPUT ?= $(SHARD_DIR)/generations.parquet
SCORE_RM ?= $(MODEL)
SCORE_FLAGS ?= $(if $(filter $(MODEL),$(SCORE_RM)),--head linear)
SCORE_OUT ?= $(SHARD_DIR)/scores.parquet
SHARD_PARTS = $$(for i in $$(seq 0 $$(($(SHARDS) - 1))); do echo $(SHARD_DIR)/part$$i.parquet; done)

$(SHARD_DIR)/generations.parquet: | build
	@mkdir -p $(SHARD_DIR)
	$(BIN)/qrm-synth --questions 12 --samples 4 --seed $(SEED) -o $@

score-sharded: $(SCORE_INPUT) $(SCORE_RM) | build
	@mkdir -p $(SHARD_DIR)
	@pids=; for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
		$(BIN)/qrm-score $(SCORE_INPUT) --rm $(SCORE_RM) $(SCORE_FLAGS) --shard $$i/$(SHARDS) -q \
			-o $(SHARD_DIR)/part$$i.parquet & pids="$$pids $$!"; \
	done; status=0; for pid in $$pids; do wait $$pid || status=1; done; exit $$status
	$(BIN)/qrm-score merge $(SHARD_PARTS) -o $(SCORE_OUT)
	@echo "wrote $(SCORE_OUT) from $(SHARDS) shards" >&2

# ---- does training learn? Detectability of each kind of synthetic mistake: a linear probe on
# the frozen model's final states (`--train-layers 0`: only the head and the final norm train)
# and a short training run of the top TRAIN_LAYERS layers, with both objectives. One pair per
# question so the eval pairs (qrm-train --eval-fraction of the questions, question-disjoint)
# are independent; the report gives eval accuracy with its Wilson interval and binomial
# p-value. ~6 minutes per kind for its trunk and ~2 per run on 2 idle cores. LEARN_RUNS adds
# `probe` (--train-layers 0) and `q` runs.
# Each entry is a `qrm-synth --mistakes` kind, phrased per question (minimal pairs, as in the
# demo), or KIND-sample for per-sample phrasing.
LEARN_QUESTIONS ?= 300
LEARN_MISTAKES ?= subtle copy carry copy-sample carry-sample
LEARN_STEPS ?= 40
LEARN_EVAL ?= 0.25
LW := .cache/learning
LD := reports/learning
# The stage timer and command list write to the learning work directory.
$(LW)/%: W = $(LW)

define learning_pairs
$(LW)/$(1)/pairs.parquet: | build
	@mkdir -p $(LW)/$(1)
	$$(call timed,synth-$(1),$(BIN)/qrm-synth --questions $(LEARN_QUESTIONS) --samples 8 --split id --mistakes $(firstword $(subst -, ,$(1))) --phrasing $(if $(findstring -sample,$(1)),sample,question) --seed $(SEED) -o $(LW)/$(1)/generations.parquet)
	$$(call timed,pairs-$(1),$(BIN)/qrm-pairs $(LW)/$(1)/generations.parquet --max-per-question 1 --seed $(SEED) -o $$@)
endef

# $(1) mistakes, $(2) objective, $(3) run name, $(4) trained layers (0: a probe on frozen states)
define learning_run
$(LW)/$(1)/$(3)/train_config.json: $(LW)/$(1)/pairs.parquet $(MODEL)
	$$(call timed,train-$(1)-$(3),$(BIN)/qrm-train $$< --objective $(2) --model $(MODEL) --train-layers $(4) --batch-size 8 --micro-batch 8 --max-steps $(LEARN_STEPS) --lr 1e-3 --seed $(SEED) --cache $(LW)/trunk-$(4) --eval-every 10 --eval-fraction $(LEARN_EVAL) --log $(LW)/$(1)/train-$(3).jsonl -o $(LW)/$(1)/$(3))
endef

LEARN_RUNS ?= bt
$(foreach m,$(LEARN_MISTAKES),$(eval $(call learning_pairs,$(m))))
$(foreach m,$(LEARN_MISTAKES),$(eval $(call learning_run,$(m),bt,probe,0)))
$(foreach m,$(LEARN_MISTAKES),$(foreach o,bt q,$(eval $(call learning_run,$(m),$(o),$(o),$(TRAIN_LAYERS)))))

$(LD)/README.md: $(foreach m,$(LEARN_MISTAKES),$(foreach r,$(LEARN_RUNS),$(LW)/$(m)/$(r)/train_config.json)) scripts/learning-report.sh
	@mkdir -p $(LD)
	LEARN_MISTAKES='$(LEARN_MISTAKES)' LEARN_RUNS='$(LEARN_RUNS)' LEARN_QUESTIONS=$(LEARN_QUESTIONS) LEARN_STEPS=$(LEARN_STEPS) \
	LEARN_EVAL=$(LEARN_EVAL) TRAIN_LAYERS=$(TRAIN_LAYERS) SEED=$(SEED) \
	bash scripts/learning-report.sh $(LW) $(LD) > $@.tmp && mv $@.tmp $@

learning: $(LD)/README.md
	@echo "wrote $(LD)/README.md" >&2

# ---- PRM800K phase 1 (human step ratings): pairs are a good (+1) and a bad (-1) next step of
# one solution prefix from train_plus (question-disjoint from test); a seeded subset of the
# test rows (PRM_TEST_PER_QUESTION rated prefixes per question) is scored, then step-level
# AUROC and error localisation against the human labels. The defaults took ~35 minutes on 2
# cores shared with two other training jobs (each model: ~10 min training, 2 min goal, 5 min
# scoring 98 rows; reports/prm800k has the stage times). Rows longer than PRM_MAX_LEN tokens
# are skipped (counted in the report), not cut.
PRM_TRAIN ?= ../shared/data/prm800k/phase1_train_plus.stepwise-critic.parquet
PRM_TEST ?= ../shared/data/prm800k/phase1_test.stepwise-critic.parquet
PRM_TRAIN_QUESTIONS ?= 150
PRM_PER_QUESTION ?= 2
PRM_TEST_PER_QUESTION ?= 1
PRM_STEPS ?= 20
PRM_BATCH ?= 8
PRM_MICRO_BATCH ?= 4
PRM_LR ?= 1e-3
PRM_MAX_LEN ?= 768
PRM_EMBED_LIMIT ?= 32
PW := .cache/prm800k
PD := reports/prm800k
# The stage timer and command list write to the PRM800K work directory.
$(PW)/%: W = $(PW)
$(PD)/%: W = $(PW)

$(PW)/train.parquet: | build
	$(call timed,import-train,$(BIN)/qrm-import $(PRM_TRAIN) --neutral drop -o $@ 2> $(PW)/import-train.log)

$(PW)/test.parquet: | build
	$(call timed,import-test,$(BIN)/qrm-import $(PRM_TEST) -o $@ 2> $(PW)/import-test.log)

$(PW)/pairs.parquet: $(PW)/train.parquet
	$(call timed,pairs,$(BIN)/qrm-pairs $< --group-col prefix_id --reuse --max-per-question $(PRM_PER_QUESTION) --max-questions $(PRM_TRAIN_QUESTIONS) --seed $(SEED) -o $@ 2> $(PW)/pairs.log)

# Every test question held out, PRM_TEST_PER_QUESTION of its rated rows kept (a seeded draw).
$(PW)/held.parquet: $(PW)/test.parquet
	$(call timed,held,$(BIN)/qrm-pairs $< --split-questions 1 --holdout-samples $(PRM_TEST_PER_QUESTION) --seed $(SEED) --holdout $@ -o $(PW)/no-pairs.parquet 2> $(PW)/held.log)

PRM_TRAIN_FLAGS = --model $(MODEL) --train-layers $(TRAIN_LAYERS) --batch-size $(PRM_BATCH) --micro-batch $(PRM_MICRO_BATCH) \
	--max-steps $(PRM_STEPS) --lr $(PRM_LR) --seed $(SEED) --cache $(PW)/trunk --eval-every 10 --max-len $(PRM_MAX_LEN)

$(PW)/bt/config.json: $(PW)/pairs.parquet $(MODEL)
	$(call timed,train-bt,$(BIN)/qrm-train $< --objective bt $(PRM_TRAIN_FLAGS) --log $(PW)/train-bt.jsonl -o $(PW)/bt)

$(PW)/q/config.json: $(PW)/pairs.parquet $(MODEL) $(PW)/bt/config.json
	$(call timed,train-q,$(BIN)/qrm-train $< --objective q $(PRM_TRAIN_FLAGS) --log $(PW)/train-q.jsonl -o $(PW)/q)

$(PW)/goal-%.safetensors: $(PW)/pairs.parquet $(PW)/%/config.json
	$(call timed,embed-$*,$(BIN)/qrm-embed $< --rm $(PW)/$* --limit $(PRM_EMBED_LIMIT) --seed $(SEED) -o $@)

$(PW)/scores-%.parquet: $(PW)/held.parquet $(PW)/goal-%.safetensors
	$(call timed,score-$*,$(BIN)/qrm-score $< --rm $(PW)/$* --goal $(PW)/goal-$*.safetensors --emit-tokens --max-len $(PRM_MAX_LEN) --truncate skip -o $@ 2> $(PW)/score-$*.log)

$(PW)/scores.parquet: $(PW)/scores-bt.parquet $(PW)/scores-q.parquet | $(PW)/goal-bt.safetensors $(PW)/goal-q.safetensors
	$(call timed,cat,$(BIN)/qrm-cat $(PW)/scores-bt.parquet $(PW)/scores-q.parquet -o $@)

# Step level: each rated step scored at its last token (the row's final token: these rows rate
# their last step), +1 against -1, neutral steps left out; rows skipped by --truncate skip drop.
$(PD)/steps.md: $(PW)/scores.parquet
	@mkdir -p $(PD)
	$(call timed,auroc-steps-q,$(BIN)/qrm-auroc $< --steps --score q_last --by rm --ci bootstrap --seed $(SEED) --drop-nan --format markdown -o $(PW)/steps-q.md)
	$(call timed,auroc-steps-reward,$(BIN)/qrm-auroc $< --steps --score reward --by rm --ci bootstrap --seed $(SEED) --drop-nan --format markdown -o $(PW)/steps-reward.md)
	$(call timed,auroc-steps-neutral,$(BIN)/qrm-auroc $< --steps --neutral-steps positive --score q_last --by rm --ci bootstrap --seed $(SEED) --drop-nan --format markdown -o $(PW)/steps-neutral.md)
	{ cat $(PW)/steps-q.md; echo; cat $(PW)/steps-reward.md; echo; cat $(PW)/steps-neutral.md; } > $@

$(PD)/localisation.md: $(PW)/scores.parquet
	@mkdir -p $(PD)
	$(call timed,localisation,$(BIN)/qrm-filter $< --localise --by rm --sweep=-0.2:0.4:0.2 --drop-nan --format markdown -o $@)

$(PD)/README.md: $(PD)/steps.md $(PD)/localisation.md scripts/prm800k-report.sh
	PRM_TRAIN=$(PRM_TRAIN) PRM_TEST=$(PRM_TEST) PRM_TRAIN_QUESTIONS=$(PRM_TRAIN_QUESTIONS) PRM_PER_QUESTION=$(PRM_PER_QUESTION) \
	PRM_TEST_PER_QUESTION=$(PRM_TEST_PER_QUESTION) PRM_STEPS=$(PRM_STEPS) PRM_BATCH=$(PRM_BATCH) PRM_MICRO_BATCH=$(PRM_MICRO_BATCH) \
	PRM_LR=$(PRM_LR) PRM_MAX_LEN=$(PRM_MAX_LEN) PRM_EMBED_LIMIT=$(PRM_EMBED_LIMIT) TRAIN_LAYERS=$(TRAIN_LAYERS) SEED=$(SEED) MODEL=$(MODEL) \
	bash scripts/prm800k-report.sh $(PW) $(PD) > $@.tmp && mv $@.tmp $@

prm800k:
	@test -f $(PRM_TRAIN) -a -f $(PRM_TEST) || \
		{ echo "no PRM800K data at $(PRM_TRAIN), $(PRM_TEST); set PRM_TRAIN= and PRM_TEST=" >&2; exit 1; }
	@$(MAKE) --no-print-directory $(PD)/README.md
	@echo "wrote $(PD)/README.md" >&2

# The CUDA binaries and the device check's package (docs/cuda.md): CUDA 13.0 from the registry's
# wheels, no GPU needed here; ~20 minutes on 2 cores.
cuda-dist:
	bash scripts/cuda-build.sh all

clean-learning:
	rm -rf $(LW) $(LD)

clean-demo:
	rm -rf .cache/demo reports/demo

clean-gsm8k:
	rm -rf .cache/gsm8k reports/gsm8k

clean-prm800k:
	rm -rf $(PW) $(PD)

# ---- qrm-serve end to end (docs/serving.md): OpenRLHF's own remote-RM client against the server
# (its wheel without dependencies, and aiohttp, in a virtualenv of its own), a load test of
# SERVE_CLIENTS concurrent single-item clients over SERVE_REQUESTS real ZeroEval GSM8K texts
# against offline qrm-score in the same run, the fault cases, and a PPO-shaped exchange. Every
# server it starts listens on a free loopback port and is stopped. By default the default model
# with an untrained linear head; SERVE_RM and SERVE_FLAGS choose a trained one.
SERVE_DIR := .cache/serve-check
SERVE_RM ?= $(MODEL)
SERVE_FLAGS ?= $(if $(filter $(MODEL),$(SERVE_RM)),--head linear)
SERVE_REQUESTS ?= 264
SERVE_CLIENTS ?= 128
SERVE_ZEROEVAL ?= ../shared/data/zeroeval/gsm8k_test_42models.jsonl.gz

$(SERVE_DIR)/venv/bin/python:
	@mkdir -p $(SERVE_DIR)
	python3 -m venv $(SERVE_DIR)/venv
	$(SERVE_DIR)/venv/bin/python -m pip install -q aiohttp || \
		echo "serve-check: aiohttp not installed; the OpenRLHF client check will use a stand-in" >&2

serve-check: $(SERVE_RM) $(SERVE_DIR)/venv/bin/python | build
	@test -f $(SERVE_ZEROEVAL) || { echo "no ZeroEval data at $(SERVE_ZEROEVAL); set SERVE_ZEROEVAL=" >&2; exit 1; }
	$(SERVE_DIR)/venv/bin/python scripts/serve-check.py --bin $(BIN) --rm $(SERVE_RM) \
		$(foreach flag,$(SERVE_FLAGS),--rm-flag=$(flag)) --zeroeval $(SERVE_ZEROEVAL) \
		--work $(SERVE_DIR) --requests $(SERVE_REQUESTS) --clients $(SERVE_CLIENTS) \
		> $(SERVE_DIR)/report.md.tmp; status=$$?; mv $(SERVE_DIR)/report.md.tmp $(SERVE_DIR)/report.md; \
		cat $(SERVE_DIR)/report.md; exit $$status

#!/usr/bin/env bash
# Renders the training-recipe table of reports/learning/recipe.md from qrm-train runs on one
# pairs file: one row per run directory (its train_config.json and step log), wall times from
# the driver's timings table. Every number is read from the runs; nothing is typed in.
#
#   scripts/recipe-report.sh WORK_DIR   (WORK_DIR/<run>/train_config.json, WORK_DIR/<run>.jsonl,
#                                        WORK_DIR/timings.tsv: "<run>\t<seconds>")
set -euo pipefail
work="$1"

printf '| run | objective | λ | center | negative goals | layers | steps | lr | eval accuracy | 95 %% CI | eval pooled AUROC | eval BT loss | eval reward std | wall s |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for config in "$work"/*/train_config.json; do
    run="$(basename "$(dirname "$config")")"
    seconds="$(awk -F'\t' -v r="$run" '$1 == r { s = $2 } END { print (s == "" ? "–" : s) }' "$work/timings.tsv")"
    jq -r --arg run "$run" --arg s "$seconds" '[$run, .config.objective,
        (if .config.objective == "q" then .config.lambda else "–" end),
        (.config.center_rewards // 0), (.config.negative_goals // "anywhere"),
        .train_layers, .steps, .config.learning_rate,
        .eval.wins, .eval.pairs, .eval.accuracy,
        .eval_accuracy_interval.low, .eval_accuracy_interval.high,
        (.eval.auroc // "–"), .eval.loss_bt, .eval.reward_std, $s] | @tsv' "$config" |
        awk -F'\t' '{ auroc = ($14 == "–") ? "–" : sprintf("%.3f", $14);
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %d/%d = %.3f | [%.3f, %.3f] | %s | %.3f | %.2f | %s |\n",
                $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, auroc, $15, $16, $17 }'
done

#!/usr/bin/env bash
# Renders the training-recipe table of reports/learning/recipe.md from qrm-train runs on one
# pairs file: one row per run directory (its train_config.json), wall times from the driver's
# timings table, and one row per stopped run (a step log without a finished run: its last eval
# row). Every number is read from the runs; nothing is typed in.
#
#   scripts/recipe-report.sh WORK_DIR   (WORK_DIR/<run>/train_config.json, WORK_DIR/<run>.jsonl,
#                                        WORK_DIR/timings.tsv: "<run>\t<seconds>")
set -euo pipefail
work="$1"

printf '| run | objective | λ | center | cross pairs | negative goals | layers | steps | lr | eval accuracy | 95 %% CI | eval pooled AUROC | eval BT loss | eval contrastive | eval reward std | wall s |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for config in "$work"/*/train_config.json; do
    run="$(basename "$(dirname "$config")")"
    seconds="$(awk -F'\t' -v r="$run" '$1 == r { s = $2 } END { print (s == "" ? "–" : s) }' "$work/timings.tsv")"
    jq -r --arg run "$run" --arg s "$seconds" '[$run, .config.objective,
        (if .config.objective == "q" then .config.lambda else "–" end),
        (.config.center_rewards // 0), (.config.cross_pairs // 0), (.config.negative_goals // "anywhere"),
        .train_layers, .steps, .config.learning_rate,
        .eval.wins, .eval.pairs, .eval.accuracy,
        .eval_accuracy_interval.low, .eval_accuracy_interval.high,
        (.eval.auroc // "–"), .eval.loss_bt, .eval.loss_contrastive, .eval.reward_std, $s] | @tsv' "$config" |
        awk -F'\t' '{ auroc = ($15 == "–") ? "–" : sprintf("%.3f", $15);
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d/%d = %.3f | [%.3f, %.3f] | %s | %.3f | %.3f | %.2f | %s |\n",
                $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, auroc, $16, $17, $18, $19 }'
done
for log in "$work"/*.jsonl; do
    run="$(basename "$log" .jsonl)"
    [ -e "$work/$run/train_config.json" ] && continue
    jq -rs --arg run "$run" 'map(select(.eval_accuracy != null)) | last | [$run, .step,
        .eval_wins, .eval_pairs, .eval_accuracy, (.eval_auroc // "–"), .eval_loss,
        .eval_contrastive, .eval_reward_std] | @tsv' "$log" |
        awk -F'\t' '{ printf "| %s (stopped; last eval at step %s) | | | | | | | | | %d/%d = %.3f | | %.3f | %.3f | %.3f | %.2f | |\n",
            $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
done

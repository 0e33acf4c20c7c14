# How these results were made (2-core CPU, no GPU; each run on one thread, OMP_NUM_THREADS=1,
# two to four runs sharing the two cores, so wall times in the logs are rough).
export OMP_NUM_THREADS=1

# addition-ablations/: 3 digits, the `addition` preset, eval every 50 iterations, seeds 1337 and 2
for seed in 1337 2; do
  python -m pygpt.train --task addition --digits 3 --eval-interval 50 --seed $seed --out-dir d3-rev
  python -m pygpt.train --task addition --digits 3 --eval-interval 50 --seed $seed --no-reverse --out-dir d3-normal
  python -m pygpt.train --task addition --digits 3 --eval-interval 50 --seed $seed --no-mask --out-dir d3-nomask
  python -m pygpt.train --task addition --digits 3 --eval-interval 50 --seed $seed --no-reverse --no-mask --out-dir d3-normal-nomask
done   # (seed 2 runs are named *-s2)

# addition-digits/: d3 is d3-rev above
python -m pygpt.train --task addition --digits 6 --max-iters 3000 --eval-interval 100 --out-dir d6
python -m pygpt.train --task addition --digits 9 --max-iters 4000 --eval-interval 100 --out-dir d9
python -m pygpt.train --task addition --digits 12 --max-iters 3000 --eval-interval 100 --eval-problems 2000 --out-dir d12

# calculator/
python -m pygpt.train --task calculator --batch-size 128 --out-dir calculator   # = the preset
python -m pygpt.eval_task --ckpt calculator --n 10000 --show 20 > calculator/eval_task.txt
# then pygpt.calc as in calculator/calc-examples.txt; tables and curves:
python -m pygpt.task_curves d3-rev d3-rev-s2 ... --out addition-ablations --title "3-digit addition"
python -m pygpt.train --task calculator --no-trace --out-dir calculator-notrace   # the ablation
python -m pygpt.eval_task --ckpt calculator-notrace --n 10000 --show 10 > calculator/eval_task-notrace.txt

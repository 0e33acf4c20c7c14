set -e
cd /work/main
P=/work/main/.venv/bin/python
export OMP_NUM_THREADS=1
$P -m pygpt.prepare text --input ../shared/data/gutenberg/gutenberg_pd_en.txt --out /tmp/exp/gut_bpe --tokenizer bpe --vocab-size 4096 --doc-blank-lines 4 --no-progress
$P -m pygpt.prepare text --input ../shared/data/tinyshakespeare/input.txt --out /tmp/exp/sh_bpe --tokenizer-from /tmp/exp/gut_bpe --no-progress
$P -m pygpt.train --preset shakespeare-cpu --data /tmp/exp/sh_bpe --max-iters 500 --eval-interval 100 --sample-tokens 0 --out-dir /tmp/exp/scratch_bpe > /tmp/exp/scratch_bpe.log 2>&1
$P -m pygpt.train --preset shakespeare-cpu --data /tmp/exp/gut_bpe --max-iters 3000 --eval-interval 500 --sample-tokens 0 --out-dir /tmp/exp/pre_bpe > /tmp/exp/pre_bpe.log 2>&1
$P -m pygpt.train --preset shakespeare-cpu --data /tmp/exp/sh_bpe --init-from /tmp/exp/pre_bpe --max-iters 500 --learning-rate 3e-4 --min-lr 3e-5 --warmup-iters 50 --eval-interval 100 --sample-tokens 200 --out-dir /tmp/exp/ft_bpe > /tmp/exp/ft_bpe.log 2>&1
echo ALLDONE

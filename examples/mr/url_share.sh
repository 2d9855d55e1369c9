#!/usr/bin/env bash
# URL frequency with shell mapper/reducer programs (two MapReduce jobs).
# usage: examples/mr/url_share.sh data/access.log out/urls
set -euo pipefail
in=$1 out=$2
rainstorm mapreduce --allow-exec --input "$in" --output "$out/counts" \
  --mapper "awk -F'\"' 'NF > 2 { split(\$2, r, \" \"); if (r[2] != \"\") print r[2] \"\t\" 1 }'" \
  --reducer "awk -F'\t' '{ c[\$1] += \$2 } END { for (u in c) print u \"\t\" c[u] }'"
rainstorm mapreduce --allow-exec --partitions 1 --input "$out/counts" --output "$out/share" \
  --mapper "awk '{ print \"all\t\" \$0 }'" \
  --reducer "awk -F'\t' '{ u[NR] = \$2; n[NR] = \$3; t += \$3 } END { for (i = 1; i <= NR; i++) printf \"%s\t%.10f\n\", u[i], n[i] / t }'"

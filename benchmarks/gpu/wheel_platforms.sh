# pip download options for the lent GPU machines' python 3.12 (x86_64 manylinux wheels only, newest tags
# first); sourced by stage.sh and stage_train.sh: "${plat[@]}"
plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux_2_5 \
    manylinux2014 manylinux1; do
  plat+=(--platform "${p}_x86_64")
done

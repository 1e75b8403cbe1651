#!/usr/bin/env bash
# Wheels the service needs on the GPU machine beyond ../shared/gpu/fetch_wheels.sh's .whl7: the AWS SDK (storage/
# imports it at start), uvicorn's httptools and uvloop (requirements.txt) and py-spy (bench/gpu_bench.py
# --profile-s). Run after fetch_wheels.sh, from the repo root.
set -euo pipefail
mkdir -p .whl7
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d .whl7 \
  boto3==1.43.11 botocore==1.43.127 s3transfer==0.17.1 python-dateutil==2.9.0.post0 six==1.17.0 urllib3==2.8.0 \
  py-spy==0.4.3 httptools==0.9.0 uvloop==0.23.0
du -sh .whl7

"""Object storage (S3 and S3-compatible stores): reading inputs, listing prefixes, writing results.

s3.py: the client, reads with size caps, paginated listing, uploads; policy.py: which buckets API callers may use;
results.py: what a document's output folder becomes under an output prefix; job_io.py: a job's S3 side.
"""

"""Data preparation: the Apollo label table and schemes, label reading, scan/validate/split, lists, cache."""

import cv2 as _cv2

# One OpenCV thread in every process, set before anything forks. A process that has used
# OpenCV's thread pool and then forks leaves a locked pool in the child; a child that then
# resizes the pool (cv2.setNumThreads) deadlocks (measured: 42 of 60 forked children hung).
# Parallelism comes from worker processes and threads instead.
_cv2.setNumThreads(1)

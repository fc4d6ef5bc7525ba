"""A stand-in for InsightFace's train_softmax.py that prints the real log format, fast.

Committed by the tests as src/train_softmax.py of a fixture upstream, so recipes run it with the seed's
exact arguments. It writes checkpoint files (PREFIX-symbol.json, PREFIX-NNNN.params) like
mx.model.save_checkpoint, trains until killed (or --max-steps), and is steered by environment variables:

  FAKE_DELAY      seconds per batch (default 0.002)
  FAKE_IMAGES     images in the dataset (default 400)
  FAKE_RATE       accuracy gained per step (default 0.01); FAKE_CAP caps it (default 0.99)
  FAKE_CRASH_AT   raise an error at this step (only for --loss-type FAKE_CRASH_LOSS, when that is set)
  FAKE_WITH_BIAS  1: the softmax symbol has an fc7_bias node (as without the no-bias patch)
  FAKE_RANDOM     1: draw from Python's random like the real code (its shuffle): each accuracy loses up to
                  0.001 and each .params file holds a random word, so an unseeded run differs from the last
  FAKE_NAN_AT     from this step, the Speedometer's acc is nan (a diverged run)
  FAKE_LR_FACTOR  the lr the lr-batch-epoch lines print is the real one times this (a schedule gone wrong)
  FAKE_SLOW_AT    from this step, the Speedometer's samples/sec is a tenth (a data stall)
  FAKE_HOLD       a file: after each checkpoint, training waits while it exists (a test sends its signal
                  to a stage that is surely mid-training, however slow the machine, then removes it)
  FAKE_HOLD_FROM  the first checkpoint FAKE_HOLD holds after (default 1): a test that must see N verification
                  rounds, and no more however late the runner reads them, holds from checkpoint N
"""

import argparse
import json
import logging
import os
import random
import sys
import time

RANDOM = os.environ.get("FAKE_RANDOM") == "1"


def parse_args():
    p = argparse.ArgumentParser()
    for name, default in [
        ("--network", "r50"), ("--prefix", "../model-r50/model"), ("--pretrained", ""), ("--data-dir", ""),
        ("--lr-steps", ""), ("--target", "lfw,cfp_fp,agedb_30"), ("--version-act", "prelu"),
    ]:  # fmt: skip
        p.add_argument(name, default=default, type=str)
    for name, default in [
        ("--ckpt", 1),
        ("--loss-type", 4),
        ("--per-batch-size", 128),
        ("--emb-size", 512),
        ("--verbose", 2000),
        ("--max-steps", 0),
        ("--end-epoch", 100000),
    ]:
        p.add_argument(name, default=default, type=int)
    for name, default in [
        ("--lr", 0.1),
        ("--wd", 0.0005),
        ("--fc7-wd-mult", 1.0),
        ("--margin-s", 64.0),
        ("--margin-m", 0.5),
        ("--mom", 0.9),
    ]:
        p.add_argument(name, default=default, type=float)
    args, _ = p.parse_known_args()
    return args


def save_checkpoint(prefix, n, loss_type):
    nodes = [
        {"op": "null", "name": "data", "inputs": []},
        {"op": "null", "name": "fc1_weight", "inputs": []},
        {"op": "null", "name": "fc7_weight", "inputs": []},
    ]
    if loss_type == 0 and os.environ.get("FAKE_WITH_BIAS") == "1":
        nodes.append({"op": "null", "name": "fc7_bias", "inputs": []})
    nodes.append({"op": "FullyConnected", "name": "fc7", "attrs": {"no_bias": "True"}, "inputs": [[0, 0, 0]]})
    with open(prefix + "-symbol.json", "w") as f:
        json.dump({"nodes": nodes, "arg_nodes": [0, 1, 2], "heads": [[len(nodes) - 1, 0, 0]]}, f)
    with open("%s-%04d.params" % (prefix, n), "wb") as f:
        f.write(b"fake params %d" % n + (b" %d" % random.getrandbits(64) if RANDOM else b""))
    logging.info('Saved checkpoint to "%s-%04d.params"', prefix, n)


def main():
    logging.basicConfig(level=logging.INFO)
    args = parse_args()
    delay = float(os.environ.get("FAKE_DELAY", "0.002"))
    images = int(os.environ.get("FAKE_IMAGES", "400"))
    rate = float(os.environ.get("FAKE_RATE", "0.01"))
    cap = float(os.environ.get("FAKE_CAP", "0.99"))
    crash_at = int(os.environ.get("FAKE_CRASH_AT", "0"))
    nan_at = int(os.environ.get("FAKE_NAN_AT", "0"))
    lr_factor = float(os.environ.get("FAKE_LR_FACTOR", "1"))
    slow_at = int(os.environ.get("FAKE_SLOW_AT", "0"))
    hold = os.environ.get("FAKE_HOLD", "")
    hold_from = int(os.environ.get("FAKE_HOLD_FROM", "1"))
    if os.environ.get("FAKE_CRASH_LOSS") not in (None, str(args.loss_type)):
        crash_at = 0
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    print("gpu num:", len(cvd.split(","))) if cvd else print("use cpu")
    print("num_layers", 1)
    print("image_size", [112, 112])
    num_classes = 20
    prop = os.path.join(args.data_dir, "property")
    if os.path.exists(prop):
        num_classes = int(open(prop).read().split(",")[0])
    print("num_classes", num_classes)
    args.batch_size = args.per_batch_size
    args.num_classes = num_classes
    print("Called with argument:", argparse.Namespace(**vars(args)))
    if args.pretrained:
        vec = args.pretrained.split(",")
        print("loading", vec)
        if not os.path.exists("%s-%04d.params" % (vec[0], int(vec[1]))):
            raise OSError("[Errno 2] No such file: %s-%04d.params" % (vec[0], int(vec[1])))
    print("init mobilefacenet", 1)
    print("header0 label [%d. %d.]" % (images + 1, images + 1 + num_classes))
    print("id2range", num_classes)
    print(images)
    print("rand_mirror", 1)
    targets = args.target.split(",")
    for t in targets:
        print("(200, 3, 112, 112)")
        print("ver", t)
    lr_steps = [int(x) for x in args.lr_steps.split(",")] if args.lr_steps else [40000, 60000, 80000]
    print("lr_steps", lr_steps)
    prefix_dir = os.path.dirname(args.prefix)
    if prefix_dir and not os.path.exists(prefix_dir):
        os.makedirs(prefix_dir)
    bpe = images // args.batch_size
    lr = args.lr
    step = 0
    save = 0
    highest = 0.0
    epoch = 0
    base = 0.3 if not args.pretrained else 0.6
    while True:
        print("call reset()")
        for nbatch in range(bpe):
            time.sleep(delay)
            step += 1
            if step in lr_steps:
                lr *= 0.1
                print("lr change to", lr)
            if nbatch and nbatch % 20 == 0:
                acc = min(cap, base + rate * step) / 2
                if nan_at and step >= nan_at:
                    acc = float("nan")
                speed = 1000.0 / (1 + delay * 100) / (10 if slow_at and step >= slow_at else 1)
                logging.info(
                    "Epoch[%d] Batch [%d-%d]\tSpeed: %.2f samples/sec\tacc=%f",
                    epoch,
                    nbatch - 20,
                    nbatch,
                    speed,
                    acc,
                )
            if step % 1000 == 0:
                print("lr-batch-epoch:", lr * lr_factor, nbatch, epoch)
            if crash_at and step >= crash_at:
                raise KeyError("CUDA_VISIBLE_DEVICES")
            if step % args.verbose == 0:
                acc = min(cap, base + rate * step) - (random.random() * 0.001 if RANDOM else 0.0)
                for t in targets:
                    print("testing verification..")
                    print("(200, 128)")
                    print("infer time", 0.01)
                    print("[%s][%d]XNorm: %f" % (t, step, 20.0))
                    print("[%s][%d]Accuracy-Flip: %1.5f+-%1.5f" % (t, step, acc, 0.01))
                save += 1
                if args.ckpt > 1 or (args.ckpt == 1 and acc >= highest):
                    print("saving", save)
                    sys.stdout.flush()
                    save_checkpoint(args.prefix, save, args.loss_type)
                    sys.stdout.flush()
                    sys.stderr.flush()
                    while hold and save >= hold_from and os.path.exists(hold):
                        time.sleep(0.05)
                highest = max(highest, acc)
                print("[%d]Accuracy-Highest: %1.5f" % (step, highest))
            if args.max_steps > 0 and step > args.max_steps:
                sys.exit(0)
        logging.info("Epoch[%d] Train-acc=%f", epoch, min(cap, base + rate * step) / 2)
        logging.info("Epoch[%d] Time cost=%.3f", epoch, bpe * delay)
        epoch += 1
        if epoch >= args.end_epoch:
            return


if __name__ == "__main__":
    main()

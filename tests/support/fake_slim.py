"""A stand-in for deploy/model_slim.py: keeps the graph up to fc1, drops fc7*, writes PREFIX-0000.params and,
like the real one, overwrites PREFIX-symbol.json."""

import argparse
import json

p = argparse.ArgumentParser()
p.add_argument("--model", default="../models/model-r34-amf/model,60")
args = p.parse_args()
prefix, epoch = args.model.split(",")
print("loading", prefix, int(epoch))
sym = json.load(open(prefix + "-symbol.json"))
sym["nodes"] = [n for n in sym["nodes"] if not n["name"].startswith("fc7")]
json.dump(sym, open(prefix + "-symbol.json", "w"))
data = open("%s-%04d.params" % (prefix, int(epoch)), "rb").read()
open(prefix + "-0000.params", "wb").write(data)

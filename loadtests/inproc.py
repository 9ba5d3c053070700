import time, numpy as np, dataclasses, tempfile, sys
from func.config import Settings
from func.api.app import create_app
def app_with(env):
    s = dataclasses.replace(Settings.from_env({"ACCESS_LOG": "off", **env}), shared_dir=None)
    app = create_app(s); app.extensions['warmstart'].wait_loaded(); return app
apps = {"on": app_with({}), "log": app_with({"PREDICTION_LOG": tempfile.mkdtemp(), "PREDICTION_LOG_FLUSH_S": "1"}), "nofeedback": app_with({"FEEDBACK": "0"})}
m = apps["on"].extensions['warmstart'].model
x = np.random.default_rng(0).normal(size=(m.card.n_features,)).tolist()
res = {k: [] for k in apps}
for r in range(5):
    for k, app in apps.items():
        c = app.test_client()
        t = time.process_time()
        for _ in range(3000):
            c.post("/predict", json={"features": x})
        res[k].append((time.process_time() - t) / 3000 * 1e6)
for k, v in res.items():
    print(k, "median CPU us/request", round(sorted(v)[2], 1), [round(a) for a in v])

"""A float64 NumPy reference of the M2 model (Kingma et al. 2014), written independently
of the C core: the inputs [x, onehot(y)] and [z, onehot(y)] are built explicitly, the
unlabelled rows are replicated with np.repeat, and the backward pass is plain reverse
mode over the same formulas. Parameter names follow vaec.M2's."""
import numpy as np

from reference import activate, activate_grad  # the VAE reference's activations

LOG_2PI = np.log(2 * np.pi)


def act_d(name, x):
    """The derivative at the pre-activation x."""
    return activate_grad(name, x, activate(name, x))


def log_softmax(l):
    m = l.max(axis=1, keepdims=True)
    return l - m - np.log(np.exp(l - m).sum(axis=1, keepdims=True))


class Net:
    """An MLP prefix.{0..n-1} with activations, then linear heads prefix.{head}."""

    def __init__(self, P, G, prefix, n, heads, act):
        self.P, self.G, self.prefix, self.n, self.heads, self.act = P, G, prefix, n, heads, act

    def forward(self, h):
        self.ins, self.pres = [], []
        for i in range(self.n):
            W, b = self.P[f"{self.prefix}.{i}.weight"], self.P[f"{self.prefix}.{i}.bias"]
            self.ins.append(h)
            pre = h @ W.T + b
            self.pres.append(pre)
            h = activate(self.act, pre)
        self.h = h
        return [h @ self.P[f"{self.prefix}.{k}.weight"].T + self.P[f"{self.prefix}.{k}.bias"] for k in self.heads]

    def backward(self, d_heads):
        dh = 0
        for k, d in zip(self.heads, d_heads):
            self.G[f"{self.prefix}.{k}.weight"] += d.T @ self.h
            self.G[f"{self.prefix}.{k}.bias"] += d.sum(0)
            dh = dh + d @ self.P[f"{self.prefix}.{k}.weight"]
        for i in reversed(range(self.n)):
            d = dh * act_d(self.act, self.pres[i])
            self.G[f"{self.prefix}.{i}.weight"] += d.T @ self.ins[i]
            self.G[f"{self.prefix}.{i}.bias"] += d.sum(0)
            dh = d @ self.P[f"{self.prefix}.{i}.weight"]
        return dh  # gradient of the network's input


def bound_rows(P, G, cfg, x, Y, eps):
    """L(x, y) per row for one-hot rows Y and noise eps; returns (L, back) where
    back(gL) adds the gradients of sum(gL * L) into G."""
    C, Z, act = cfg["n_classes"], cfg["latent_dim"], cfg["activation"]
    nh = len(cfg["hidden"])
    gauss = cfg["likelihood"] == "gaussian"
    enc = Net(P, G, "encoder", nh, ["mu", "logvar"], act)
    dec = Net(P, G, "decoder", nh, ["out", "logvar"] if gauss else ["out"], act)
    mu, lv = enc.forward(np.concatenate([x, Y], axis=1))
    z = mu + np.exp(lv / 2) * eps
    outs = dec.forward(np.concatenate([z, Y], axis=1))
    if gauss:
        m, v = outs
        logp = (-0.5 * (LOG_2PI + v + (x - m) ** 2 * np.exp(-v))).sum(1)
    else:
        l = outs[0]
        logp = (x * l - np.logaddexp(0, l)).sum(1)
    kl = 0.5 * (mu ** 2 + np.exp(lv) - 1 - lv).sum(1)
    L = logp - kl - np.log(C)

    def back(gL):
        g = gL[:, None]
        if gauss:
            d_outs = [g * (x - m) * np.exp(-v), -0.5 * g * (1 - (x - m) ** 2 * np.exp(-v))]
        else:
            d_outs = [g * (x - 1 / (1 + np.exp(-l)))]
        dzy = dec.backward(d_outs)
        dz = dzy[:, :Z]
        dmu = dz - g * mu
        dlv = dz * eps * 0.5 * np.exp(lv / 2) - g * 0.5 * (np.exp(lv) - 1)
        enc.backward([dmu, dlv])

    return L, back


def m2_loss_grad(params, cfg, xl, yl, xu, eps_l, eps_u, alpha, wl, wu):
    """loss = wl * sum_l [-L(x,y) - alpha log q(y|x)] + wu * sum_u [-U(x)], its gradients
    (float64 dict) and the sums (sum -L, sum -log q, sum -U)."""
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    G = {k: np.zeros_like(v) for k, v in P.items()}
    C = cfg["n_classes"]
    ncls = len(cfg["classifier_hidden"])
    loss, sums = 0.0, [0.0, 0.0, 0.0]
    if xl is not None and len(xl):
        xl = np.asarray(xl, np.float64)
        Y = np.eye(C)[yl]
        L, back = bound_rows(P, G, cfg, xl, Y, np.asarray(eps_l, np.float64))
        clf = Net(P, G, "classifier", ncls, ["out"], cfg["activation"])
        lq = log_softmax(clf.forward(xl)[0])
        lqy = lq[np.arange(len(yl)), yl]
        loss += wl * np.sum(-L - alpha * lqy)
        sums[0] += -L.sum()
        sums[1] += -lqy.sum()
        back(-wl * np.ones(len(L)))
        glq = -wl * alpha * Y                       # d loss / d log q
        clf.backward([glq - np.exp(lq) * glq.sum(1, keepdims=True)])
    if xu is not None and len(xu):
        xu = np.asarray(xu, np.float64)
        n = len(xu)
        xr = np.repeat(xu, C, axis=0)               # row r's copy for class c at r*C + c
        Y = np.tile(np.eye(C), (n, 1))
        L, back = bound_rows(P, G, cfg, xr, Y, np.asarray(eps_u, np.float64).reshape(n * C, -1))
        L = L.reshape(n, C)
        clf = Net(P, G, "classifier", ncls, ["out"], cfg["activation"])
        lq = log_softmax(clf.forward(xu)[0])
        q = np.exp(lq)
        negU = (q * (-L + lq)).sum(1)               # -U = -sum_y q L - H(q)
        loss += wu * negU.sum()
        sums[2] += negU.sum()
        back((-wu * q).reshape(-1))
        glq = wu * q * (-L + lq + 1)                # d loss / d log q (q = exp(log q))
        clf.backward([glq - q * glq.sum(1, keepdims=True)])
    return loss, G, sums


def m2_bound(params, cfg, x, y, eps):
    """L(x, y) per row (y given) or U(x) per row (y None; eps (n, C, Z))."""
    P = {k: np.asarray(v, np.float64) for k, v in params.items()}
    G = {k: np.zeros_like(v) for k, v in P.items()}
    C = cfg["n_classes"]
    x = np.asarray(x, np.float64)
    if y is not None:
        return bound_rows(P, G, cfg, x, np.eye(C)[y], np.asarray(eps, np.float64))[0]
    n = len(x)
    L = bound_rows(P, G, cfg, np.repeat(x, C, 0), np.tile(np.eye(C), (n, 1)),
                   np.asarray(eps, np.float64).reshape(n * C, -1))[0].reshape(n, C)
    clf = Net(P, G, "classifier", len(cfg["classifier_hidden"]), ["out"], cfg["activation"])
    lq = log_softmax(clf.forward(x)[0])
    q = np.exp(lq)
    return (q * L).sum(1) - (q * lq).sum(1)

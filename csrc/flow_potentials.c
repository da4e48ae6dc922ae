/* flow_potentials.c -- the four unnormalized 2-D densities exp(−U(z)) of Rezende &
 * Mohamed (2015), Table 1 (their Fig. 3), with analytic gradients, in float64.
 *   w1 = sin(2π z1/4),  w2 = 3 exp(−½((z1 − 1)/0.6)²),  w3 = 3 σ((z1 − 1)/0.3)
 *   U1 = ½((‖z‖ − 2)/0.4)² − ln(exp(−½((z1 − 2)/0.6)²) + exp(−½((z1 + 2)/0.6)²))
 *   U2 = ½((z2 − w1)/0.4)²
 *   U3 = −ln(exp(−½((z2 − w1)/0.35)²) + exp(−½((z2 − w1 + w2)/0.35)²))
 *   U4 = −ln(exp(−½((z2 − w1)/0.4)²) + exp(−½((z2 − w1 + w3)/0.35)²))
 * The log-sum-exps are evaluated stably (max subtracted); U1's gradient at z = 0
 * (where ‖z‖ has none) takes the radial term as 0.
 * exp(−U2..U4) are not normalizable: every slice z1 = c has the same mass, so a fit of
 * KL(q‖p) spreads q along z1 without end. With box > 0 a wall is added outside the
 * square [−box, box]²: U += Σ_i ½ ((|z_i| − box)₊ / 0.25)²  (U unchanged inside). */
#include "flows.h"
#include <math.h>

#define PI 3.14159265358979323846

/* −ln(e^a1 + e^a2) and its derivative weights p1, p2 (p1 + p2 = 1) */
static double neg_lse(double a1, double a2, double *p1, double *p2) {
    double m = a1 > a2 ? a1 : a2;
    double e1 = exp(a1 - m), e2 = exp(a2 - m), s = e1 + e2;
    *p1 = e1 / s;
    *p2 = e2 / s;
    return -(m + log(s));
}

static void eval1(vaec_potential p, double z1, double z2, double *U, double *g1, double *g2) {
    const double w1 = sin(PI * z1 / 2.0), dw1 = (PI / 2.0) * cos(PI * z1 / 2.0);
    double p1, p2;
    switch (p) {
    case VAEC_POTENTIAL_U1: {
        double r = sqrt(z1 * z1 + z2 * z2), v = (r - 2.0) / 0.4;
        double a1 = -0.5 * ((z1 - 2.0) / 0.6) * ((z1 - 2.0) / 0.6), a2 = -0.5 * ((z1 + 2.0) / 0.6) * ((z1 + 2.0) / 0.6);
        *U = 0.5 * v * v + neg_lse(a1, a2, &p1, &p2);
        double dr = r > 0.0 ? v / 0.4 / r : 0.0;
        *g1 = dr * z1 - (p1 * (-(z1 - 2.0) / 0.36) + p2 * (-(z1 + 2.0) / 0.36));
        *g2 = dr * z2;
        break;
    }
    case VAEC_POTENTIAL_U2: {
        double v = (z2 - w1) / 0.4;
        *U = 0.5 * v * v;
        *g2 = v / 0.4;
        *g1 = -v / 0.4 * dw1;
        break;
    }
    case VAEC_POTENTIAL_U3:
    case VAEC_POTENTIAL_U4: {
        double s1 = p == VAEC_POTENTIAL_U3 ? 0.35 : 0.4, s2 = 0.35, w, dw;
        if (p == VAEC_POTENTIAL_U3) {
            double q = (z1 - 1.0) / 0.6;
            w = 3.0 * exp(-0.5 * q * q);
            dw = w * (-q / 0.6);
        } else {
            double x = (z1 - 1.0) / 0.3, sg = x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
            w = 3.0 * sg;
            dw = 3.0 * sg * (1.0 - sg) / 0.3;
        }
        double v1 = (z2 - w1) / s1, v2 = (z2 - w1 + w) / s2;
        *U = neg_lse(-0.5 * v1 * v1, -0.5 * v2 * v2, &p1, &p2);
        /* ∂a1 = −v1/s1 ∂(z2 − w1), ∂a2 = −v2/s2 ∂(z2 − w1 + w); U = −lse: ∂U = −(p1 ∂a1 + p2 ∂a2) */
        double c1 = p1 * v1 / s1, c2 = p2 * v2 / s2;
        *g2 = c1 + c2;
        *g1 = c1 * (-dw1) + c2 * (-dw1 + dw);
        break;
    }
    }
}

#define WALL 0.25

/* ½ ((|x| − box)₊ / WALL)², added to U; its derivative added to *g */
static double wall(double x, double box, double *g) {
    double over = fabs(x) - box;
    if (over <= 0.0) return 0.0;
    *g += (x > 0 ? over : -over) / (WALL * WALL);
    return 0.5 * (over / WALL) * (over / WALL);
}

vaec_status vaec_potential_eval(vaec_potential p, double box, const double *z, int64_t n, double *U, double *dU) {
    if (p < VAEC_POTENTIAL_U1 || p > VAEC_POTENTIAL_U4)
        return vaec_fail(VAEC_ERR_ARG, "potential: unknown code %d (expected 1..4 for U1..U4)", (int)p);
    if (!(box >= 0.0) || !isfinite(box)) return vaec_fail(VAEC_ERR_ARG, "box must be a finite number >= 0 (0: none), got %g", box);
    for (int64_t r = 0; r < n; r++) {
        double u, g1, g2;
        eval1(p, z[2 * r], z[2 * r + 1], &u, &g1, &g2);
        if (box > 0.0) u += wall(z[2 * r], box, &g1) + wall(z[2 * r + 1], box, &g2);
        if (U) U[r] = u;
        if (dU) {
            dU[2 * r] = g1;
            dU[2 * r + 1] = g2;
        }
    }
    return VAEC_OK;
}

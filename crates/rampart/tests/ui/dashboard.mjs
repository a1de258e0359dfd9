// Drives the dashboard of a running `rampart up` in headless Chromium (Playwright), as
// tests/dashboard.rs starts it. Every page: loads, shows real data, passes axe-core without
// serious or critical violations, and is saved as a screenshot. Fails (exit 1) on any console
// error, page error or Content-Security-Policy violation.
//
// Environment: RAMPART_UI_LOGIN (the login link `up` printed), RAMPART_GATEWAY, RAMPART_ADMIN,
// RAMPART_TOKEN, RAMPART_DEMO_PID (the demo upstream to kill), RAMPART_NODE_MODULES,
// RAMPART_CHROMIUM, RAMPART_ARTIFACTS, RAMPART_ACME_BUNDLE (the demo tenant's files, JSON).

import { createRequire } from "node:module";
import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const require = createRequire(join(env("RAMPART_NODE_MODULES"), "noop.js"));
const { chromium } = require("playwright-core");
const axeSource = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const login = env("RAMPART_UI_LOGIN");
const gateway = env("RAMPART_GATEWAY");
const admin = env("RAMPART_ADMIN");
const token = env("RAMPART_TOKEN");
const artifacts = env("RAMPART_ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const problems = [];
const steps = [];
const step = (what) => {
  steps.push(what);
  console.log(`dashboard: ${what}`);
};

const browser = await chromium.launch({
  executablePath: env("RAMPART_CHROMIUM"),
  headless: true,
  // Root in CI: Chromium's own sandbox needs user namespaces it may not have there.
  args: ["--no-sandbox", "--disable-gpu"],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // The event stream is cut when the page navigates away or closes; nothing else may fail.
    if (!r.url().endsWith("/ui/events")) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });

  // Signing in: the printed link sets the session cookie and lands on the overview.
  await page.goto(login);
  if (!page.url().endsWith("/ui")) throw new Error(`login landed on ${page.url()}`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "rampart_session");
  if (!session || !session.httpOnly || session.sameSite !== "Strict")
    throw new Error(`session cookie: ${JSON.stringify(session)}`);
  step("signed in through the printed link; the cookie is HttpOnly, SameSite=Strict");

  async function audit(name) {
    await page.evaluate(axeSource);
    const result = await page.evaluate(() =>
      // eslint-disable-next-line no-undef
      axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "best-practice"] } }),
    );
    const serious = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
    for (const v of serious) problems.push(`axe on ${name}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
    await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
    step(`${name}: axe ${result.violations.length} violation(s), ${serious.length} serious; screenshot saved`);
  }

  async function open(name) {
    await page.click(`nav a[href="#${name}"]`);
    await page.waitForSelector(`#page-${name}:not([hidden])`);
  }

  const text = (sel) => page.locator(sel).innerText();

  // Overview: a request sent through the gateway shows up in the per-route table.
  await page.waitForFunction(() => document.getElementById("feed").textContent.startsWith("live"));
  // Spread over a few seconds, so the charts have a shape in the screenshot.
  for (let i = 0; i < 30; i++) {
    const r = await fetch(`${gateway}/hello?i=${i}`);
    await r.arrayBuffer();
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await page.waitForFunction(
    () => [...document.querySelectorAll("#overview-routes tbody tr")].some((tr) => tr.cells[1]?.textContent === "catch-all" && Number(tr.cells[6].textContent.replace(/,/g, "")) >= 30),
    null,
    { timeout: 15000 },
  );
  await page.waitForFunction(() => {
    const line = document.querySelector("#chart-rps polyline");
    return line !== null && line.getAttribute("points").split(" ").length >= 4;
  });
  await page.waitForFunction(() => document.getElementById("total-p99").textContent.endsWith("ms"));
  step(`overview: 30 requests to /hello appear on route catch-all, charts drawn, p99 ${await text("#total-p99")}`);
  await audit("overview");

  // Routes: every route of the demo, searchable.
  await open("routes");
  await page.waitForFunction(() => document.querySelectorAll("#routes-table tbody tr").length >= 5);
  await page.fill("#routes-search", "healthz");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#routes-table tbody tr")];
    return rows.length === 1 && rows[0].textContent.includes("health");
  });
  await page.fill("#routes-search", "");
  await page.waitForFunction(() => /^page 1 of \d+$/.test(document.getElementById("routes-page").textContent));
  step("routes: listed, paged, and search narrows them to the match");
  await audit("routes");

  // Clusters: the demo endpoint is healthy, then unhealthy once its process is killed.
  await open("clusters");
  await page.waitForFunction(() => [...document.querySelectorAll("#clusters-table tbody tr")].some((tr) => tr.cells[0].textContent === "demo" && tr.cells[4].textContent === "healthy"), null, { timeout: 20000 });
  if ((await text("#clusters-page")) !== "page 1 of 1") throw new Error(`clusters pager: ${await text("#clusters-page")}`);
  await page.fill("#clusters-search", "no-such-cluster");
  await page.waitForFunction(() => document.querySelector("#clusters-table tbody td.empty") !== null);
  await page.fill("#clusters-search", "demo");
  await audit("clusters");
  process.kill(Number(env("RAMPART_DEMO_PID")), "SIGKILL");
  await page.waitForFunction(() => [...document.querySelectorAll("#clusters-table tbody tr")].some((tr) => tr.cells[0].textContent === "demo" && tr.cells[4].textContent === "failed_active_hc"), null, { timeout: 20000 });
  step("clusters: demo's endpoint turned failed_active_hc after its process was killed");
  await page.screenshot({ path: join(artifacts, "clusters-unhealthy.png"), fullPage: true });

  // Policies: tenants with revisions; an edit through the admin API shows its new revision;
  // the try box asks the admin API for a decision.
  await open("policies");
  await page.waitForFunction(() => [...document.querySelectorAll("#policies-table tbody tr")].some((tr) => tr.cells[0].textContent === "acme"));
  const bundle = JSON.parse(env("RAMPART_ACME_BUNDLE"));
  bundle.revision = "acme-edited-in-test";
  const put = await fetch(`${admin}/policy/tenants/acme`, {
    method: "PUT",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify(bundle),
  });
  if (put.status !== 200) throw new Error(`PUT bundle: ${put.status} ${await put.text()}`);
  await page.waitForFunction(() => [...document.querySelectorAll("#policies-table tbody tr")].some((tr) => tr.cells[0].textContent === "acme" && tr.cells[1].textContent.includes("acme-edited-in-test")), null, { timeout: 10000 });
  const engine = await page.locator("#policies-table tbody tr", { hasText: "acme" }).locator("td").nth(3).innerText();
  if (!/^(vm|interpreter)/.test(engine)) throw new Error(`acme's engine: ${engine}`);
  step(`policies: the edited bundle's revision appeared live (engine: ${engine})`);
  await page.selectOption("#try-tenant", "acme");
  await page.click("#try-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("try-result").textContent.includes("HTTP 200"));
  const decided = await text("#try-result");
  if (!decided.includes('"allowed": true') || !/authz\.rego:\d+ /.test(decided))
    throw new Error(`try a request (allowed, with the lines evaluated): ${decided}`);
  await page.fill("#try-input", '{"method": "DELETE", "path": "/api/orders", "headers": {"x-user": "vera"}}');
  await page.click("#try-form button[type=submit]");
  await page.waitForFunction(() => document.getElementById("try-result").textContent.includes('"allowed": false'));
  step("policies: the try box shows vera's GET allowed (with the lines evaluated) and DELETE denied");
  await audit("policies");

  // xDS: the gateway, node rampart-up, acknowledged what it was sent.
  await open("xds");
  await page.waitForFunction(() => [...document.querySelectorAll("#xds-table tbody tr")].some((tr) => tr.cells[0].textContent === "rampart-up" && tr.cells[3].textContent !== "" && tr.cells[3].textContent === tr.cells[2].textContent));
  step("xds: node rampart-up acknowledged its versions");
  await audit("xds");

  // Store: one member, the leader, applied index shown.
  await open("store");
  await page.waitForFunction(() => [...document.querySelectorAll("#store-table tbody tr")].some((tr) => tr.cells[2].textContent === "leader" && Number(tr.cells[5].textContent) > 0));
  step("store: the single member leads with a non-zero applied index");
  await audit("store");

  await open("functions");
  await page.waitForFunction(() => document.querySelectorAll("#functions-table tbody tr").length >= 1);
  await page.waitForFunction(() => document.querySelectorAll("#plugins-table tbody tr").length >= 1);
  await audit("functions");

  // Flows: live counts when tracing runs (root), else the reason it does not.
  await open("flows");
  await page.waitForFunction(() => document.getElementById("flows-summary").textContent.length > 0);
  step(`flows: ${await text("#flows-summary")}`);
  await audit("flows");

  // Sign out: the cookie is cleared and the page sends the browser to the login form.
  await page.click(".logout button");
  await page.waitForURL(/\/ui\/login$/);
  await page.goto(login.replace(/\/login\?.*$/, ""));
  if (!page.url().includes("/ui/login")) throw new Error(`after sign-out /ui did not ask to sign in: ${page.url()}`);
  step("signed out: /ui asks to sign in again");
} catch (e) {
  failed = true;
  console.error(`dashboard: FAILED after [${steps.join("; ")}]: ${e.stack || e}`);
} finally {
  await browser.close();
}
for (const p of problems) console.error(`dashboard: ${p}`);
process.exit(failed || problems.length ? 1 : 0);

"""The dashboard in a real (headless) Chromium, driven by Selenium.

Run by examples/tests/dashboard.rs against a master and a worker it
started: the page is refused without the token, a login opens it, a task
submitted after the page loaded appears with its status, a line it prints
later appears on its task page, and the cancel button cancels another
task; an array of 40 tasks is one row with its counts, a click shows its
tasks (index, start, end, run time, exit, reason), its link lists them
alone, and the name filter finds it. Screenshots go to --out. Exits non-zero, saying why, on any failure.
"""

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30


def cli(args, *command):
    out = subprocess.run(
        [args.cli, "--master", args.master, "--token", args.token, "--json", *command],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout)


def status_in_row(driver, task):
    cells = driver.find_elements(By.CSS_SELECTOR, f'tr[data-task="{task}"] td.status')
    return cells[0].text if cells else None


def click(driver, css):
    """Clicks what `css` finds; a live update may repaint the page between
    finding and clicking, so a stale element is found again."""
    for _ in range(10):
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return
        except StaleElementReferenceException:
            continue
    driver.find_element(By.CSS_SELECTOR, css).click()


def cell(row, name):
    return row.find_element(By.CSS_SELECTOR, "td." + name).text


def refused_without_token(url):
    try:
        urllib.request.urlopen(url + "/api/overview", timeout=10)
    except urllib.error.HTTPError as e:
        return e.code == 401
    return False


def main():
    p = argparse.ArgumentParser()
    for flag in ("--url", "--token", "--cli", "--master", "--worker", "--out"):
        p.add_argument(flag, required=True)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    assert refused_without_token(args.url), "the API answered without the token"

    options = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(a)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    wait = WebDriverWait(driver, WAIT)
    step = "start"
    try:
        step = "the page without the token is refused (sent to the login form)"
        driver.get(args.url + "/")
        wait.until(lambda d: d.current_url.endswith("/login"))
        assert driver.find_elements(By.ID, "token"), "no login form"
        driver.save_screenshot(str(out / "dashboard-login.png"))

        step = "a wrong token is refused"
        driver.find_element(By.ID, "token").send_keys("not-the-token")
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: "not the cluster token" in d.page_source)

        step = "logging in opens the overview"
        driver.find_element(By.ID, "token").send_keys(args.token)
        driver.find_element(By.ID, "login").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-worker="{args.worker}"]'))
        cookie = driver.get_cookie("cloudai_session")
        assert cookie and cookie.get("httpOnly") and cookie.get("sameSite") == "Strict", cookie
        step = "a state change carried by the cookie alone is refused (CSRF)"
        forged = driver.execute_async_script(
            "fetch('/api/workers/' + arguments[0] + '/drain', {method: 'POST'})"
            ".then(r => arguments[1](r.status))", args.worker)
        assert forged == 403, f"a drain without X-CSRF-Token answered {forged}"

        # Set once: a reload would lose it, so the checks below see live updates.
        driver.execute_script("window.loadedOnce = true")

        step = "a task submitted after the page loaded appears with its status"
        late = cli(args, "task", "busybox", "--", "sh", "-c", "echo first line; sleep 4; echo the-late-line")["task_id"]
        wait.until(lambda d: status_in_row(d, late) in ("running", "completed"))
        assert driver.execute_script("return window.loadedOnce === true"), "the page reloaded"

        step = "the late line appears on the task page"
        click(driver, f'tr[data-task="{late}"] a')
        wait.until(lambda d: "first line" in d.find_element(By.ID, "logs").text)
        assert "the-late-line" not in driver.find_element(By.ID, "logs").text, "the late line came too early"
        wait.until(lambda d: "the-late-line" in d.find_element(By.ID, "logs").text)
        wait.until(lambda d: d.find_element(By.ID, "status").text == "completed")
        driver.save_screenshot(str(out / "dashboard-task.png"))

        step = "the cancel button cancels a second task"
        driver.find_element(By.CSS_SELECTOR, 'a[href="#/"]').click()
        sleeper = cli(args, "task", "busybox", "--", "sh", "-c", "sleep 300")["task_id"]
        wait.until(lambda d: status_in_row(d, sleeper) == "running")
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-worker="{args.worker}"] td.num').text == "1")
        driver.save_screenshot(str(out / "dashboard-overview.png"))
        click(driver, f'tr[data-task="{sleeper}"] button.cancel')
        wait.until(lambda d: status_in_row(d, sleeper) == "cancelled")
        shown = cli(args, "show", sleeper)
        assert shown["task"]["status"] == "cancelled", shown

        step = "a retried task's page lists its attempts"
        retried = cli(args, "task", "--retries", "1", "--retry-delay", "0", "busybox", "--",
                      "sh", "-c", 'test "$CLOUDAI_ATTEMPT" -ge 2')["task_id"]
        driver.get(f"{args.url}/#/task/{retried}")
        wait.until(lambda d: d.find_element(By.ID, "status").text == "completed")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")) == 2)
        rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")]
        assert "exited" in rows[0] and "completed" in rows[1], rows

        step = "an array of 40 tasks is one row with its counts"
        sweep = cli(args, "task", "--array", "1-40", "--name", "sweep", "--cpu", "0.05", "--mem", "0.01",
                    "busybox", "--", "sh", "-c", 'test "$CLOUDAI_ARRAY_INDEX" -ne 3')["array_id"]
        driver.get(f"{args.url}/#/")
        row = f'tr.array[data-array="{sweep}"]'
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, row)
                   and "39 completed, 1 failed" in cell(d.find_element(By.CSS_SELECTOR, row), "counts"))
        text = driver.find_element(By.CSS_SELECTOR, row).text
        assert f"{sweep}_[1-40]" in text and "sweep" in text and "40 tasks" in text, text
        assert not driver.find_elements(By.CSS_SELECTOR, "tr.member"), "its tasks listed before a click"
        driver.save_screenshot(str(out / "dashboard-array.png"))

        step = "a click on the array's row shows its tasks"
        click(driver, row + " .toggle")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.member[data-task]")) == 40)
        members = driver.find_elements(By.CSS_SELECTOR, "tr.member[data-task]")
        assert sorted(cell(m, "index") for m in members) == sorted(f"[{i}]" for i in range(1, 41)), \
            [cell(m, "index") for m in members]
        third = next(m for m in members if cell(m, "index") == "[3]")
        assert (cell(third, "status"), cell(third, "exit")) == ("failed", "1"), third.text
        reason = third.find_element(By.CSS_SELECTOR, "td.reason").get_attribute("title")
        assert reason == "exited with code 1", reason
        for m in members:
            assert cell(m, "name") == "sweep", m.text
            assert cell(m, "start") != "-" and cell(m, "end") != "-" and cell(m, "run") != "-", m.text
        failed_id = third.get_attribute("data-task")
        driver.save_screenshot(str(out / "dashboard-array-open.png"))
        click(driver, row + " .toggle")
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "tr.member"))

        step = "the array's link lists its tasks alone"
        click(driver, row + " a.all")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tasks tr[data-task]")) == 40)
        assert not driver.find_elements(By.CSS_SELECTOR, "tr.array"), "the array listed collapsed"
        assert driver.find_element(By.CSS_SELECTOR, 'form.filters input[name="array"]').get_attribute("value") == sweep

        step = "a failed task's page shows its name, array, run and exit"
        click(driver, f'tr[data-task="{failed_id}"] a')
        wait.until(lambda d: d.find_elements(By.ID, "exit-code") and d.find_element(By.ID, "exit-code").text == "1")
        assert driver.find_element(By.ID, "name").text == "sweep"
        assert sweep in driver.find_element(By.ID, "array").text and "index 3" in driver.find_element(By.ID, "array").text
        assert driver.find_element(By.ID, "reason").text == "exited with code 1"
        for field in ("start", "end", "run-time"):
            assert driver.find_element(By.ID, field).text != "-", field
        driver.save_screenshot(str(out / "dashboard-array-task.png"))

        step = "the name filter finds the array"
        driver.get(f"{args.url}/#/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'form.filters input[name="name"]'))
        driver.find_element(By.CSS_SELECTOR, 'form.filters input[name="name"]').send_keys("sweep")
        click(driver, 'form.filters button[type="submit"]')
        wait.until(lambda d: "name=sweep" in d.current_url
                   and len(d.find_elements(By.CSS_SELECTOR, "#tasks tr.array, #tasks tr[data-task]")) == 1)
        assert driver.find_elements(By.CSS_SELECTOR, row), "the array's row"

        driver.get(f"{args.url}/#/")
        # The unfiltered list (the filtered one had a drain button too).
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-task="{late}"]'))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-worker="{args.worker}"] button.drain'))

        step = "the drain button drains the worker"
        click(driver, f'tr[data-worker="{args.worker}"] button.drain')
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-worker="{args.worker}"] td.drain').text
                   in ("draining", "drained"))
        click(driver, f'tr[data-worker="{args.worker}"] button.undrain')
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-worker="{args.worker}"] td.drain').text == "-")
    except Exception as e:  # noqa: BLE001 - any failure is reported with the page
        driver.save_screenshot(str(out / "dashboard-failure.png"))
        print(f"FAILED at: {step}: {type(e).__name__}: {e}", file=sys.stderr)
        print(driver.page_source[:4000], file=sys.stderr)
        try:
            for entry in driver.get_log("browser"):
                print("browser:", entry, file=sys.stderr)
        except Exception:  # noqa: BLE001 - the log is a courtesy
            pass
        return 1
    finally:
        driver.quit()
    print("the dashboard passed every step")
    return 0


if __name__ == "__main__":
    sys.exit(main())

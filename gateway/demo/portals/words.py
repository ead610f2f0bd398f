"""What the portals say, in Chinese first: identity levels, case statuses, modes, provinces, times.

Times arrive from the gateway in UTC (RFC 3339, ``Z``); people read them in Beijing time
(UTC+8, no daylight saving), so every time on a page is converted here and marked 北京时间.

Must not: show a code where a word exists (a province code, a status value, a level).
"""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta, timezone

from gateway.settings import PROVINCES

BEIJING = timezone(timedelta(hours=8), "北京时间")

LEVELS: dict[str, tuple[str, str]] = {
    "L1": ("需注册账号", "an account"),
    "L2": ("需实名认证", "real-name checked"),
    "L3": ("需实名认证（人脸核验）", "real-name and face checked"),
    "LP": ("需法人账号登录", "an enterprise account"),
    "Counter": ("需到窗口现场核验", "in person at a window"),
}
REACHED: dict[str, str] = {
    "L1": "已注册",
    "L2": "已实名认证",
    "L3": "已实名认证（人脸核验）",
    "LP": "法人账号",
    "Counter": "窗口现场核验",
}
MODES: dict[str, str] = {
    "online": "全程网办",
    "proxy": "异地代收代办",
    "joint": "多地联办",
    "window": "窗口办理",
    "query": "在线查询核验",
}
STATUSES: dict[str, str] = {
    "received": "已收件",
    "originals_checked": "原件已核验",
    "forwarded": "已转办",
    "processing": "办理中",
    "result_delivered": "结果已送达",
    "closed": "已办结",
    "supplement_requested": "需补齐补正",
    "not_accepted": "不予受理",
    "returned": "已退件",
    "outcome_unknown": "结果待核实",
    "dead_lettered": "投递失败，待人工处理",
    "compensating": "正在撤回已办环节",
}
PART_STATUSES: dict[str, str] = {
    "pending": "待转办",
    "waiting": "等待前序环节",
    "cancelled": "已取消",
    "compensating": "正在撤回",
    "compensated": "已撤回",
    "compensation_failed": "撤回失败，待人工处理",
    "forwarded": "已转办",
    "processing": "办理中",
    "done": "已办结",
    "supplement_requested": "需补齐补正",
    "not_accepted": "不予受理",
    "returned": "已退件",
    "outcome_unknown": "结果待核实",
    "dead_lettered": "投递失败，待人工处理",
}
MATERIAL_SOURCES: dict[str, str] = {
    "e-licence": "电子证照，免提交",
    "upload": "上传",
    "original": "窗口核验原件",
    "shared-data": "共享数据，免提交",
}


PROBLEMS: dict[str, str] = {
    "client.insufficient_level": "认证等级不足",
    "client.forbidden": "无权办理此事项",
    "client.validation_failed": "填写的信息不符合要求",
    "client.invalid_request": "请求不完整",
    "client.unknown_service": "没有这个事项",
    "client.unknown_operation": "没有这项办理",
    "client.no_agreement": "两地之间尚未开通此事项",
    "client.not_found": "没有找到",
    "client.rate_limited": "办理过于频繁，请稍后再试",
    "client.unauthenticated": "登录已过期，请重新登录",
    "backend.unavailable": "办理地系统暂时无法访问，请稍后再试",
    "backend.circuit_open": "办理地系统暂时无法访问，请稍后再试",
    "backend.timeout": "办理地系统响应超时，请稍后再试",
    "backend.rejected": "办理地系统未受理",
    "backend.fault": "办理地系统未受理",
    "backend.rate_limited": "办理地系统繁忙，请稍后再试",
    "backend.server_error": "办理地系统出错，请稍后再试",
    "backend.error": "办理地系统出错，请稍后再试",
    "backend.bad_response": "办理地系统答复无法识别",
    "backend.response_too_large": "办理地系统答复过大",
    "gateway.audit_unavailable": "暂时无法记录办理过程，请稍后再试",
    "gateway.system_busy": "系统繁忙，请稍后再试",
    "gateway.internal": "系统出错，请稍后再试",
    "client.licence_not_found": "签发地没有查到该证照",
    "client.licence_not_subjects": "只能出示本人的证照",
    "client.licence_revoked": "该证照已被签发机关吊销",
    "client.licence_expired": "该证照已过有效期",
    "client.licence_cancelled": "该证照已被注销",
    "client.licence_changed": "该证照信息已变更",
    "client.licence_seal_invalid": "证照电子印章验证未通过",
    "client.licence_issuer_unknown": "该证照的签发地尚未接入",
    "client.unknown_licence_type": "没有这种证照",
    "client.presentation_invalid": "亮证码无效",
    "client.presentation_expired": "亮证码已过期，请持证人重新亮证",
    "client.presentation_used": "亮证码已使用过，请持证人重新亮证",
    "backend.licence_issuer_unavailable": "签发地证照系统暂时无法访问，请稍后再试",
}


# Timeline reasons the gateway writes (gateway/cases), in the applicant's words.
REASONS: dict[str, str] = {
    "delivered": "已转送办理地",
    "status query": "办理地答复进度",
    "undone": "已撤回",
    "reconciled: the back-end has it": "经核实，办理地已收到",
    "reconciled: never arrived; sending again": "经核实，办理地未收到，重新转送",
    "replayed by an operator": "运维人员已重新投递",
    "原件核验 at the receiving window": "受理窗口已核验原件",
}
REASON_PREFIXES: tuple[tuple[str, str], ...] = (
    ("released:", "前序环节已办结，开始办理"),
    ("undoing:", "申请未能办结，撤回此环节"),
    ("not sent:", "申请已终止，此环节不再办理"),
    ("reconciled: never arrived; not sent", "经核实，办理地未收到；申请已终止，不再转送"),
    ("closed after", "办结"),
    ("callback", "办理地通知"),
    ("supplement #", "补正材料已转送"),
    ("补齐补正: supplement", "已提交补正材料"),
)


def reason(text: object) -> str:
    """A timeline reason in words: known gateway phrases translated, a refusal's code as its
    problem, anything else (a province's own words, 补齐补正 notes) as it is."""
    value = str(text or "")
    if value in REASONS:
        return REASONS[value]
    for prefix, words in REASON_PREFIXES:
        if value.startswith(prefix):
            return words
    if value in PROBLEMS:
        return PROBLEMS[value]
    return "" if value == "passed through" else value


def problem(code: str, status: int) -> str:
    """A refusal's stable code in words; the HTTP status when the code is not known here."""
    return PROBLEMS.get(code) or (f"系统返回 {status}" if status else "未知原因")


def e(value: object) -> str:
    """Escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def province(code: object) -> str:
    """'61' → '陕西'; an unknown code stays as it is."""
    names = PROVINCES.get(str(code))
    return names[0] if names else str(code)


def level_needed(level: object) -> str:
    return LEVELS.get(str(level), (str(level), ""))[0]


def level_reached(level: object) -> str:
    return REACHED.get(str(level), str(level))


def status(value: object) -> str:
    return STATUSES.get(str(value), str(value))


def part_status(value: object) -> str:
    return PART_STATUSES.get(str(value), str(value))


def mode(value: object) -> str:
    return MODES.get(str(value), str(value))


def beijing(value: object) -> str:
    """An RFC 3339 time from the gateway as Beijing time, 'YYYY-MM-DD HH:MM:SS'; '' if absent,
    the text itself if it is no time."""
    if not value:
        return ""
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def time_tag(value: object) -> str:
    """``<time>`` with the machine-readable instant and the Beijing time shown."""
    shown = beijing(value)
    if not shown:
        return ""
    return f"<time datetime='{e(value)}'>{e(shown)}</time>"

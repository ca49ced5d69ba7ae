export { DecayingTopK } from './sketch.js';
export { CellTraffic, CELL_SPACE, MAX_SESSION, type Candidate, type SessionTraffic, type Spare } from './traffic.js';
export { chooseHintCell, choosePartner, loadCap, meanLoad, planExchange, RateLimiter, type ExchangeParams, type ExchangePlan, type ExchangeSide } from './exchange.js';

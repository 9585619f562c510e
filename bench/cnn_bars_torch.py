# PyTorch replica of palisade-model's `cnn_learns_and_training_is_reproducible` task: how many
# seeds learn the 3-class bars task after N epochs. Usage: python cnn_bars_torch.py [EPOCHS]
# (needs torch; bench/train_bench.sh makes such a venv).
import sys, numpy as np, torch, torch.nn as nn, torch.nn.functional as F, math
torch.set_num_threads(1)
def bars(n, seed):
    r = np.random.default_rng(seed)
    x = np.zeros((n,1,14,14), np.float32); y=[]
    for i in range(n):
        c = i % 3; row = 1 + 4*c + r.integers(0,2)
        x[i,0,row,:] = 0.6 + 0.4*r.random(14)
        x[i] = np.minimum(x[i] + 0.1*r.random((1,14,14)), 1.0)
        y.append(c)
    return torch.tensor(x), torch.tensor(y)
class Net(nn.Module):
    def __init__(s, c=(4,6), fc=16, drop=0.25):
        super().__init__()
        s.conv1=nn.Conv2d(1,c[0],3); s.conv2=nn.Conv2d(c[0],c[1],3)
        s.fc1=nn.Linear(c[1]*2*2,fc); s.fc2=nn.Linear(fc,3); s.drop=nn.Dropout(drop)
    def forward(s,x):
        x=F.max_pool2d(F.relu(s.conv1(x)),2); x=F.max_pool2d(F.relu(s.conv2(x)),2)
        return s.fc2(s.drop(F.relu(s.fc1(x.flatten(1)))))
epochs=int(sys.argv[1]) if len(sys.argv)>1 else 8
X,Y=bars(96,1); Xv,Yv=bars(48,2)
accs=[]
for seed in range(20):
    torch.manual_seed(seed); m=Net()
    opt=torch.optim.Adam(m.parameters(), lr=3e-3, weight_decay=1e-4, eps=1e-8)
    steps=epochs*6; t=0
    for ep in range(epochs):
        perm=torch.randperm(96)
        for b in range(6):
            lr=3e-3*0.5*(1+math.cos(math.pi*t/steps)); t+=1
            for g in opt.param_groups: g['lr']=lr
            idx=perm[b*16:(b+1)*16]; m.train()
            loss=F.cross_entropy(m(X[idx]),Y[idx]); opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    with torch.no_grad(): acc=(m(Xv).argmax(1)==Yv).float().mean().item()
    accs.append(acc)
print("epochs",epochs,"val acc per seed", [round(a,3) for a in accs])
print("mean", np.mean(accs), ">0.9:", sum(a>0.9 for a in accs), "/", len(accs))
